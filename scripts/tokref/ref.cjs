#!/usr/bin/env node
// Reference tokenizers for Loom's tests and benchmarks (scripts/setup.sh
// installs the packages with `npm ci`). Commands:
//   export OUTDIR                       vocabularies the npm packages ship:
//                                       gpt2.tiktoken, cl100k_base.tiktoken (tiktoken's),
//                                       llama3.json {vocab, merges, specials} (llama3-tokenizer-js)
//   hf TOKENIZER.json CORPUS.json OUT   Hugging Face tokenizers: ids and decoded text per document
//   tiktoken RANKS PATTERN SPECIALS.json CORPUS.json OUT
//                                       tiktoken (its Rust core as WASM), specials allowed
//   train CORPUS.txt OUT.json           Hugging Face BpeTrainer (its defaults: vocab 30000,
//                                       min_frequency 0) with a ByteLevel pre-tokenizer
//   bench TOKENIZER.json|RANKS CORPUS.txt [hf|tiktoken] [PATTERN SPECIALS.json]
//                                       encoding MB/s of the whole file: documents cut at blank lines
//                                       after 4 KB, in batches of 1 MB
//                                       (best of 3 passes); threads: RAYON_NUM_THREADS (Hugging Face)
'use strict';
const fs = require('fs');
const path = require('path');

function readCorpus(p) {
  const docs = JSON.parse(fs.readFileSync(p, 'utf8'));
  if (!Array.isArray(docs)) throw new Error(`${p}: want a JSON array of strings`);
  return docs;
}

// compact turns "BASE64 RANK" lines into the "! RANK BASE64" lines the
// tiktoken package's constructor reads.
function compact(ranks) {
  return ranks.split('\n').filter(Boolean).map((l) => {
    const [tok, r] = l.split(' ');
    return `! ${r} ${tok}`;
  }).join('\n');
}

function expand(bpeRanks) {
  const out = [];
  for (const line of bpeRanks.split('\n')) {
    if (!line) continue;
    const [, off, ...toks] = line.split(' ');
    toks.forEach((t, i) => out.push(`${t} ${Number(off) + i}`));
  }
  return out.join('\n') + '\n';
}

async function main() {
  const [cmd, ...a] = process.argv.slice(2);
  switch (cmd) {
    case 'export': {
      const dir = a[0];
      fs.mkdirSync(dir, { recursive: true });
      for (const name of ['gpt2', 'cl100k_base']) {
        const enc = require(`tiktoken/encoders/${name}.json`);
        fs.writeFileSync(path.join(dir, `${name}.tiktoken`), expand(enc.bpe_ranks));
        fs.writeFileSync(path.join(dir, `${name}.json`), JSON.stringify({ pattern: enc.pat_str, specials: enc.special_tokens }));
      }
      const mod = require('llama3-tokenizer-js');
      const t = mod.default || mod;
      const merges = [...t.merges.entries()].sort((x, y) => x[1] - y[1]).map(([k]) => {
        const i = k.indexOf(' ');
        return [k.slice(0, i), k.slice(i + 1)];
      });
      const specials = {};
      t.vocabById.forEach((s, id) => { if (id >= 128000) specials[s] = id; });
      fs.writeFileSync(path.join(dir, 'llama3.json'), JSON.stringify({ vocab: t.vocabById.slice(0, 128000), merges, specials }));
      break;
    }
    case 'hf': {
      const { Tokenizer } = require('tokenizers');
      const tok = Tokenizer.fromFile(a[0]);
      const docs = readCorpus(a[1]);
      const ids = [], decoded = [];
      for (const d of docs) {
        const enc = await tok.encode(d, null, { addSpecialTokens: false });
        const x = enc.getIds();
        ids.push(x);
        decoded.push(await tok.decode(x, false));
      }
      fs.writeFileSync(a[2], JSON.stringify({ ids, decoded }));
      break;
    }
    case 'tiktoken': {
      const { Tiktoken } = require('tiktoken/lite');
      const enc = new Tiktoken(compact(fs.readFileSync(a[0], 'utf8')), JSON.parse(fs.readFileSync(a[2], 'utf8')), a[1]);
      const docs = readCorpus(a[3]);
      const ids = docs.map((d) => Array.from(enc.encode(d, 'all')));
      const decoded = ids.map((x) => new TextDecoder().decode(enc.decode(Uint32Array.from(x))));
      enc.free();
      fs.writeFileSync(a[4], JSON.stringify({ ids, decoded }));
      break;
    }
    case 'train': {
      const { Tokenizer, BPE, byteLevelPreTokenizer } = require('tokenizers');
      const tok = new Tokenizer(BPE.init({}, []));
      tok.setPreTokenizer(byteLevelPreTokenizer(false, true));
      tok.train([a[0]]);
      tok.save(a[1], true);
      break;
    }
    case 'bench': {
      const raw = fs.readFileSync(a[1]);
      const bytes = raw.length;
      // Documents: cut at the first blank line after at least 4096
      // bytes; batches of about 1 MB of documents (loom tokenizer
      // bench cuts the same way).
      const docs = [];
      for (let start = 0; start < raw.length;) {
        const i = start + 4096 < raw.length ? raw.indexOf('\n\n', start + 4096) : -1;
        const end = i < 0 ? raw.length : i + 2;
        docs.push(raw.toString('utf8', start, end));
        start = end;
      }
      const batches = [];
      let cur = [], n = 0;
      for (const d of docs) {
        cur.push(d); n += d.length;
        if (n >= 1 << 20) { batches.push(cur); cur = []; n = 0; }
      }
      if (cur.length) batches.push(cur);
      const kind = a[2] || 'hf';
      let encode;
      if (kind === 'hf') {
        const { Tokenizer } = require('tokenizers');
        const tok = Tokenizer.fromFile(a[0]);
        encode = async (b) => { let k = 0; for (const e of await tok.encodeBatch(b, { addSpecialTokens: false })) k += e.getLength(); return k; };
      } else {
        const { Tiktoken } = require('tiktoken/lite');
        const enc = new Tiktoken(compact(fs.readFileSync(a[0], 'utf8')), JSON.parse(fs.readFileSync(a[4], 'utf8')), a[3]);
        encode = async (b) => { let k = 0; for (const s of b) k += enc.encode_ordinary(s).length; return k; };
      }
      for (const b of batches) await encode(b); // warm up
      let s = Infinity, tokens = 0;
      for (let round = 0; round < 3; round++) { // the best of three passes, as loom tokenizer bench
        const t0 = process.hrtime.bigint();
        tokens = 0;
        for (const b of batches) tokens += await encode(b);
        s = Math.min(s, Number(process.hrtime.bigint() - t0) / 1e9);
      }
      console.log(JSON.stringify({ impl: kind, bytes, tokens, seconds: s, mb_per_s: bytes / 1e6 / s, threads: process.env.RAYON_NUM_THREADS || 'all' }));
      break;
    }
    default:
      console.error('usage: ref.cjs export|hf|tiktoken|train|bench …');
      process.exit(2);
  }
}

main().catch((e) => { console.error(e.stack || String(e)); process.exit(1); });
