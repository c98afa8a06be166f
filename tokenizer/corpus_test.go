package tokenizer

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
)

// mixedCorpus returns the documents the reference tests encode: Go code,
// English prose, JSON, non-Latin scripts and emoji, long whitespace runs,
// and generated stress text. It is deterministic. maxGo caps the bytes of
// Go source taken from GOROOT.
func mixedCorpus(maxGo int) []string {
	var docs []string
	// Go code from the standard library, whole files in sorted order.
	root := filepath.Join(runtime.GOROOT(), "src")
	var files []string
	for _, dir := range []string{"strings", "bufio", "encoding/json", "net/http", "sort", "unicode/utf8"} {
		m, _ := filepath.Glob(filepath.Join(root, dir, "*.go"))
		files = append(files, m...)
	}
	sort.Strings(files)
	n := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil || n+len(b) > maxGo {
			continue
		}
		n += len(b)
		docs = append(docs, string(b))
	}
	// English prose: the licence texts every Debian system carries.
	for _, p := range []string{"/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0"} {
		if b, err := os.ReadFile(p); err == nil {
			docs = append(docs, string(b))
		}
	}
	docs = append(docs,
		"It's a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. "+
			"However little known the feelings or views of such a man may be on his first entering a neighbourhood, this truth is so well "+
			"fixed in the minds of the surrounding families, that he is considered the rightful property of some one or other of their daughters.",
		"She'll say we'd've gone; THEY'LL SAY WE'D. I'M sure you'RE right, they'Ve 'tis 'Twas o'clock rock'n'roll 'ſ 'ſhall ’tis ‘quoted’.",
		"Numbers: 1 12 123 1234 12345 3.14159 -42 1e10 0x1F ٣٤٥ ①②③ Ⅻ ½ 10,000,000 2026-12-01T09:58:00Z",
	)
	// JSON.
	var js strings.Builder
	js.WriteString("{\n  \"records\": [\n")
	for i := range 60 {
		fmt.Fprintf(&js, "    {\"id\": %d, \"name\": \"item-%03d\", \"tags\": [\"a\", \"b\", \"ç\"], \"score\": %.3f, \"ok\": %v, \"note\": null},\n", i, i, float64(i)*1.25, i%2 == 0)
	}
	js.WriteString("    {}\n  ]\n}\n")
	docs = append(docs, js.String(), `{"text":"line one\nline two\ttabbed","escaped":"\u00e9\u4e2d","nested":{"a":[1,2,{"b":"c"}]}}`)
	// Non-Latin scripts, emoji, combining marks.
	docs = append(docs,
		"中文分词是自然语言处理的基础。我们今天学习分词器，明天训练模型。",
		"日本語のテキスト：東京は日本の首都です。カタカナとひらがなと漢字。",
		"한국어 문장입니다. 토크나이저는 바이트 단위로 동작합니다.",
		"العربية: مرحبا بالعالم، هذا نص تجريبي للتقطيع.",
		"हिन्दी में एक वाक्य: नमस्ते दुनिया।",
		"Русский текст: Съешь же ещё этих мягких французских булок, да выпей чаю.",
		"Ελληνικά: Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
		"ภาษาไทย: สวัสดีชาวโลก ทดสอบการตัดคำ",
		"עברית: שלום עולם, זהו טקסט לבדיקה.",
		"Emoji: 😀 😃 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇩🇪🇯🇵 ❤️‍🔥 🤖🧠 and text after 🙂.",
		"Combining: e\u0301 a\u0308 n\u0303 Z\u0351\u0352\u0353 — café vs cafe\u0301; Ａ全角 ｶﾀｶﾅ",
		"Mixed\u00a0nbsp\u3000ideographic\u2003em\u2028line\u2029para\u0085nel\vvt\fff end",
	)
	// Whitespace runs.
	docs = append(docs,
		strings.Repeat(" ", 300)+"x"+strings.Repeat("\t", 40)+"y"+strings.Repeat("\n", 30)+"z"+strings.Repeat(" \n", 20)+strings.Repeat(" ", 17),
		"a  b   c    d\n\n\ne  \n  f\r\n\r\ng \t \t h"+strings.Repeat(" ", 1000),
		"\n\n\n   leading and trailing   \n\n\n",
		strings.Repeat("=", 500)+strings.Repeat("ab", 400)+strings.Repeat("😀", 50),
		"", " ", "\n", "'", "'s", "a", "😀",
	)
	// Generated stress text: random runs over a mixed alphabet.
	rng := rand.New(rand.NewPCG(18, 2026))
	alphabet := []rune("aeiou bcdfgh  XYZ019'\n\t.,;:!?-_/\\\"{}[]()<>|=+*&^%$#@~`é中ж😀\u00a0\u3000\r\u0301ſ")
	for range 40 {
		n := 1 + rng.IntN(400)
		var b strings.Builder
		for range n {
			b.WriteRune(alphabet[rng.IntN(len(alphabet))])
		}
		docs = append(docs, b.String())
	}
	return docs
}
