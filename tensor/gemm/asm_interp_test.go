//go:build amd64 && !purego

package gemm

// An instruction-level interpreter for kernel_amd64.s.
//
// kernelAVX512 cannot run on the machines this package is developed on
// (Zen 3, no AVX-512; QEMU TCG has no AVX-512 either), so these tests
// execute the assembly SOURCE: a small preprocessor expands the file's
// macros, a decoder turns each statement into an instruction with checked
// operands, and a machine with 16 general registers, 32 vector registers of
// 16 float32 lanes and a bounds-checked byte memory runs it. The interpreter
// is validated by running kernelAVX2 through it and comparing bit for bit
// with a native call of the same kernel; then kernelAVX512 is run on the
// same cases against plain Go references.
//
// The bf16 kernel's VDPBF16PS has no Go mnemonic and is written as BYTE
// directives; the decoder evaluates them and decodes the EVEX encoding
// (register form), and the interpreter's VDPBF16PS is checked against the
// native instruction where the CPU has AVX512-BF16.
//
// Only what the file uses is implemented. Anything else (an unknown
// mnemonic, operand form, register, directive or frame slot) is an error at
// decode time, for every TEXT body, executed or not.

import (
	"encoding/binary"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"math"
	"math/big"
	"math/rand/v2"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

const (
	asmSourceFile = "kernel_amd64.s"
	asmDeclFile   = "kernel_amd64.go"
	asmMaxSteps   = 1 << 22 // a runaway loop is an error, not a hang
)

// ------------------------------------------------------------ preprocessor

// asmMacro is one #define.
type asmMacro struct {
	funcLike bool
	params   []string
	body     string
}

// asmStmt is one assembler statement after macro expansion, with the source
// line it was expanded from.
type asmStmt struct {
	line int
	text string
}

// preprocessAsm applies the part of the C preprocessor kernel_amd64.s uses:
// backslash line splicing, // comments, #include (ignored: textflag.h only
// names TEXT flags), object- and function-like #define with rescanning
// (nested) expansion. Each expanded line is split into statements at ';'.
func preprocessAsm(src string) ([]asmStmt, error) {
	macros := map[string]asmMacro{}
	var out []asmStmt
	lines := strings.Split(src, "\n")
	for i := 0; i < len(lines); i++ {
		first := i + 1
		line := lines[i]
		for strings.HasSuffix(line, `\`) && i+1 < len(lines) {
			i++
			line = line[:len(line)-1] + lines[i]
		}
		line, err := stripAsmComment(line)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %v", asmSourceFile, first, err)
		}
		line = strings.TrimSpace(line)
		switch {
		case line == "":
		case strings.HasPrefix(line, "#"):
			if err := asmDirective(line, macros); err != nil {
				return nil, fmt.Errorf("%s:%d: %v", asmSourceFile, first, err)
			}
		default:
			x, err := expandAsmMacros(line, macros, nil)
			if err != nil {
				return nil, fmt.Errorf("%s:%d: %v", asmSourceFile, first, err)
			}
			for _, s := range strings.Split(x, ";") {
				if s = strings.TrimSpace(s); s != "" {
					out = append(out, asmStmt{line: first, text: s})
				}
			}
		}
	}
	return out, nil
}

func stripAsmComment(line string) (string, error) {
	if strings.Contains(line, "/*") {
		return "", fmt.Errorf("block comments are not supported by this interpreter")
	}
	if i := strings.Index(line, "//"); i >= 0 {
		line = line[:i]
	}
	return line, nil
}

// asmDirective handles one # line.
func asmDirective(line string, macros map[string]asmMacro) error {
	switch {
	case strings.HasPrefix(line, "#include"):
		return nil
	case strings.HasPrefix(line, "#define"):
		rest := strings.TrimLeft(line[len("#define"):], " \t")
		name := leadingIdent(rest)
		if name == "" {
			return fmt.Errorf("#define without a name: %q", line)
		}
		if _, dup := macros[name]; dup {
			return fmt.Errorf("macro %s redefined", name)
		}
		rest = rest[len(name):]
		var m asmMacro
		if strings.HasPrefix(rest, "(") { // function-like only if '(' touches the name
			end := strings.IndexByte(rest, ')')
			if end < 0 {
				return fmt.Errorf("unterminated parameter list: %q", line)
			}
			m.funcLike = true
			if list := strings.TrimSpace(rest[1:end]); list != "" {
				for _, p := range strings.Split(list, ",") {
					p = strings.TrimSpace(p)
					if leadingIdent(p) != p {
						return fmt.Errorf("bad macro parameter %q in %q", p, line)
					}
					m.params = append(m.params, p)
				}
			}
			rest = rest[end+1:]
		}
		m.body = strings.TrimSpace(rest)
		macros[name] = m
		return nil
	}
	return fmt.Errorf("unsupported directive %q", line)
}

func isIdentStart(c byte) bool { return c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }
func isIdentChar(c byte) bool  { return isIdentStart(c) || '0' <= c && c <= '9' }

// leadingIdent returns the C identifier s starts with, or "".
func leadingIdent(s string) string {
	if s == "" || !isIdentStart(s[0]) {
		return ""
	}
	i := 1
	for i < len(s) && isIdentChar(s[i]) {
		i++
	}
	return s[:i]
}

// mapIdents copies s, replacing each identifier for which f returns ok.
// Number tokens (0x1f, 8) are copied whole so their letters are never
// taken for identifiers.
func mapIdents(s string, f func(id string, rest int) (repl string, next int, ok bool, err error)) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); {
		c := s[i]
		j := i + 1
		switch {
		case isIdentStart(c):
			for j < len(s) && isIdentChar(s[j]) {
				j++
			}
			repl, next, ok, err := f(s[i:j], j)
			if err != nil {
				return "", err
			}
			if ok {
				b.WriteString(repl)
				i = next
				continue
			}
		case '0' <= c && c <= '9':
			for j < len(s) && isIdentChar(s[j]) {
				j++
			}
		}
		b.WriteString(s[i:j])
		i = j
	}
	return b.String(), nil
}

// expandAsmMacros expands every macro in s, rescanning each replacement
// with that macro disabled (active), as cpp does.
func expandAsmMacros(s string, macros map[string]asmMacro, active []string) (string, error) {
	if len(active) > 32 {
		return "", fmt.Errorf("macro nesting too deep: %v", active)
	}
	return mapIdents(s, func(id string, j int) (string, int, bool, error) {
		m, ok := macros[id]
		if !ok || slices.Contains(active, id) {
			return "", 0, false, nil
		}
		body, next := m.body, j
		if m.funcLike {
			k := j
			for k < len(s) && (s[k] == ' ' || s[k] == '\t') {
				k++
			}
			if k == len(s) || s[k] != '(' {
				return "", 0, false, nil // a function-like name without '(' is not a call
			}
			args, end, err := splitMacroArgs(s, k)
			if err != nil {
				return "", 0, false, fmt.Errorf("%s: %v", id, err)
			}
			if len(args) == 1 && args[0] == "" && len(m.params) == 0 {
				args = nil
			}
			if len(args) != len(m.params) {
				return "", 0, false, fmt.Errorf("%s takes %d arguments, got %d: %q", id, len(m.params), len(args), s[j:end])
			}
			for i := range args {
				if args[i], err = expandAsmMacros(args[i], macros, active); err != nil {
					return "", 0, false, err
				}
			}
			if body, err = substituteParams(m.body, m.params, args); err != nil {
				return "", 0, false, err
			}
			next = end
		}
		x, err := expandAsmMacros(body, macros, append(active[:len(active):len(active)], id))
		return x, next, true, err
	})
}

// splitMacroArgs splits the argument list whose '(' is at s[open] at
// top-level commas; end is the index after the closing ')'.
func splitMacroArgs(s string, open int) (args []string, end int, err error) {
	depth, start := 0, open+1
	for i := open; i < len(s); i++ {
		switch s[i] {
		case '(':
			depth++
		case ')':
			if depth--; depth == 0 {
				return append(args, strings.TrimSpace(s[start:i])), i + 1, nil
			}
		case ',':
			if depth == 1 {
				args = append(args, strings.TrimSpace(s[start:i]))
				start = i + 1
			}
		}
	}
	return nil, 0, fmt.Errorf("unterminated argument list %q", s[open:])
}

// substituteParams replaces each parameter token in body by its argument.
func substituteParams(body string, params, args []string) (string, error) {
	return mapIdents(body, func(id string, j int) (string, int, bool, error) {
		if i := slices.Index(params, id); i >= 0 {
			return args[i], j, true, nil
		}
		return "", 0, false, nil
	})
}

// evalAsmExpr evaluates an integer constant expression with + - * and
// parentheses: the displacement arithmetic macro arguments produce
// (ao+4 with ao = 24 is "24+4").
func evalAsmExpr(s string) (int64, error) {
	p := asmExprParser{s: strings.Join(strings.Fields(s), "")}
	v, err := p.or()
	if err == nil && p.i != len(p.s) {
		err = fmt.Errorf("trailing %q", p.s[p.i:])
	}
	if err != nil {
		return 0, fmt.Errorf("expression %q: %v", s, err)
	}
	return v, nil
}

type asmExprParser struct {
	s string
	i int
}

func (p *asmExprParser) peek() byte {
	if p.i < len(p.s) {
		return p.s[p.i]
	}
	return 0
}

// or is the lowest precedence level: | and ^ (Go's assembler, like Go).
func (p *asmExprParser) or() (int64, error) {
	v, err := p.sum()
	for err == nil && (p.peek() == '|' || p.peek() == '^') {
		op := p.s[p.i]
		p.i++
		var w int64
		if w, err = p.sum(); op == '|' {
			v |= w
		} else {
			v ^= w
		}
	}
	return v, err
}

func (p *asmExprParser) sum() (int64, error) {
	v, err := p.product()
	for err == nil && (p.peek() == '+' || p.peek() == '-') {
		op := p.s[p.i]
		p.i++
		var w int64
		if w, err = p.product(); op == '+' {
			v += w
		} else {
			v -= w
		}
	}
	return v, err
}

func (p *asmExprParser) product() (int64, error) {
	v, err := p.unary()
	for err == nil {
		op := p.peek()
		n := 1
		switch {
		case op == '*' || op == '&':
		case (op == '<' || op == '>') && p.i+1 < len(p.s) && p.s[p.i+1] == op:
			n = 2
		default:
			return v, err
		}
		p.i += n
		var w int64
		w, err = p.unary()
		switch op {
		case '*':
			v *= w
		case '&':
			v &= w
		case '<':
			v <<= w
		case '>':
			v >>= w
		}
	}
	return v, err
}

func (p *asmExprParser) unary() (int64, error) {
	switch c := p.peek(); {
	case c == '-' || c == '+':
		p.i++
		v, err := p.unary()
		if c == '-' {
			v = -v
		}
		return v, err
	case c == '(':
		p.i++
		v, err := p.or()
		if err == nil && p.peek() != ')' {
			err = fmt.Errorf("missing ')'")
		}
		p.i++
		return v, err
	case '0' <= c && c <= '9':
		j := p.i
		for j < len(p.s) && isIdentChar(p.s[j]) {
			j++
		}
		var v int64
		_, err := fmt.Sscan(p.s[p.i:j], &v) // decimal, 0x hex, 0 octal
		p.i = j
		return v, err
	}
	return 0, fmt.Errorf("unexpected %q at %d", p.peek(), p.i)
}

// ----------------------------------------------------------------- decoder

// asmKind is a set of operand kinds.
type asmKind uint8

const (
	kImm   asmKind = 1 << iota // $expr
	kGPR                       // AX … R15
	kVec                       // X0–X31, Y0–Y31, Z0–Z31
	kMem                       // expr(REG)
	kFrame                     // name+off(FP)
	kLabel                     // jump target
	kTile                      // TMM0–TMM7 (AMX, decoded from BYTEs)
)

type asmOperand struct {
	kind  asmKind
	reg   int    // kGPR, kVec: register; kMem: base register
	lanes int    // kVec: float32 lanes (X 4, Y 8, Z 16)
	off   int64  // kImm: value; kMem: displacement; kFrame: offset
	name  string // register name, frame argument name or label
	index int    // kMem: index register, scaled by scale (scale 0: none)
	scale int
}

// asmGPRs numbers the general registers as the hardware does. SP and BP
// are deliberately absent: the kernels have no frame.
var asmGPRs = map[string]int{
	"AX": 0, "CX": 1, "DX": 2, "BX": 3, "SI": 6, "DI": 7,
	"R8": 8, "R9": 9, "R10": 10, "R11": 11, "R12": 12, "R13": 13, "R14": 14, "R15": 15,
}

// asmSpecs lists, per mnemonic, the operand kinds allowed in each position
// (Go order: sources first, destination last).
var asmSpecs = map[string][]asmKind{
	"MOVQ":         {kFrame | kMem | kGPR | kImm, kGPR},
	"MOVL":         {kFrame | kMem | kGPR | kImm, kGPR},
	"ADDQ":         {kImm | kGPR, kGPR},
	"ANDQ":         {kImm | kGPR, kGPR},
	"TESTQ":        {kImm | kGPR, kGPR},
	"CMPL":         {kGPR, kImm | kGPR}, // Intel order: flags of arg0 − arg1
	"SHLQ":         {kImm, kGPR},
	"SHRQ":         {kImm, kGPR},
	"SHLL":         {kImm, kGPR},
	"DECQ":         {kGPR},
	"JZ":           {kLabel},
	"JNZ":          {kLabel},
	"JLE":          {kLabel},
	"JMP":          {kLabel},
	"VDPBF16PS":    {kVec, kVec, kVec}, // decoded from BYTEs (decodeEVEX)
	"RET":          {},
	"VZEROUPPER":   {},
	"PREFETCHT0":   {kMem},
	"PREFETCHT1":   {kMem},
	"VXORPS":       {kVec, kVec, kVec},
	"VPXORD":       {kVec, kVec, kVec},
	"VMULPS":       {kVec | kMem, kVec, kVec},
	"VFMADD231PS":  {kVec | kMem, kVec, kVec},
	"VBROADCASTSS": {kMem | kFrame, kVec},
	"VMOVUPS":      {kVec | kMem, kVec | kMem},
}

// asmLoadBytes is the size of a frame or scalar memory operand per mnemonic.
var asmLoadBytes = map[string]int{"MOVQ": 8, "MOVL": 4, "VBROADCASTSS": 4}

type asmInstr struct {
	op     string
	args   []asmOperand
	line   int
	text   string
	target int // jumps: index of the labelled instruction
}

// asmFrameSlot is one argument in the ABI0 frame: name+off(FP).
type asmFrameSlot struct {
	name      string
	off, size int
}

type asmFunc struct {
	name    string
	argSize int
	frame   []asmFrameSlot
	code    []asmInstr
}

var (
	asmTextRE  = regexp.MustCompile(`^TEXT\s+·(\w+)\(SB\)\s*,\s*\w+\s*,\s*\$(\d+)-(\d+)$`)
	asmLabelRE = regexp.MustCompile(`^([A-Za-z_]\w*):\s*(.*)$`)
	asmVecRE   = regexp.MustCompile(`^([XYZ])([0-9]|[12][0-9]|3[01])$`)
	asmFrameRE = regexp.MustCompile(`^([A-Za-z_]\w*)([+-].+)\(FP\)$`)
	asmMemRE   = regexp.MustCompile(`^(.*)\(([^()]*)\)$`)
	asmIndexRE = regexp.MustCompile(`^(.*\([^()]*\))\(([A-Z0-9]+)\*([1248])\)$`)
)

// loadAsm reads kernel_amd64.s and the Go declarations and decodes every
// TEXT body.
func loadAsm(t *testing.T) map[string]*asmFunc {
	t.Helper()
	src, err := os.ReadFile(asmSourceFile)
	if err != nil {
		t.Fatal(err)
	}
	frames, err := goFrames(asmDeclFile)
	if err != nil {
		t.Fatal(err)
	}
	funcs, err := decodeAsm(string(src), frames)
	if err != nil {
		t.Fatal(err)
	}
	return funcs
}

// goFrames lays out the ABI0 argument frame of every body-less (assembly)
// function declared in the Go file at path.
func goFrames(path string) (map[string][]asmFrameSlot, error) {
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
	if err != nil {
		return nil, err
	}
	sizes := map[string]int{"int": 8, "*float32": 8, "*byte": 8, "float32": 4}
	frames := map[string][]asmFrameSlot{}
	for _, d := range f.Decls {
		fd, ok := d.(*ast.FuncDecl)
		if !ok || fd.Body != nil {
			continue
		}
		if fd.Type.Results != nil {
			return nil, fmt.Errorf("%s: results not supported", fd.Name.Name)
		}
		var slots []asmFrameSlot
		off := 0
		for _, field := range fd.Type.Params.List {
			typ := goTypeString(field.Type)
			size, ok := sizes[typ]
			if !ok {
				return nil, fmt.Errorf("%s: parameter type %s not supported", fd.Name.Name, typ)
			}
			for _, n := range field.Names {
				off = (off + size - 1) / size * size
				slots = append(slots, asmFrameSlot{name: n.Name, off: off, size: size})
				off += size
			}
		}
		frames[fd.Name.Name] = slots
	}
	return frames, nil
}

func goTypeString(e ast.Expr) string {
	switch e := e.(type) {
	case *ast.Ident:
		return e.Name
	case *ast.StarExpr:
		return "*" + goTypeString(e.X)
	}
	return fmt.Sprintf("%T", e)
}

// frameSize is the argument size the TEXT line must declare: the end of
// the last argument (what go vet's asmdecl checks; a trailing float32
// ends the frame at 4 mod 8).
func frameSize(slots []asmFrameSlot) int {
	end := 0
	for _, s := range slots {
		end = max(end, s.off+s.size)
	}
	return end
}

// decodeAsm preprocesses src and decodes each TEXT body up to the next TEXT.
func decodeAsm(src string, frames map[string][]asmFrameSlot) (map[string]*asmFunc, error) {
	stmts, err := preprocessAsm(src)
	if err != nil {
		return nil, err
	}
	funcs := map[string]*asmFunc{}
	var cur *asmFunc
	var labels map[string]int
	var raw []byte // consecutive BYTE directives: one encoded instruction
	rawLine := 0
	flush := func() error {
		if len(raw) == 0 {
			return nil
		}
		var in asmInstr
		var err error
		if raw[0] == 0xC4 {
			in, err = decodeVEX(raw)
		} else {
			in, err = decodeEVEX(raw)
		}
		if err != nil {
			return fmt.Errorf("%s:%d: bytes % x: %v", asmSourceFile, rawLine, raw, err)
		}
		in.line = rawLine
		cur.code = append(cur.code, in)
		raw = raw[:0]
		return nil
	}
	finish := func() error {
		if cur == nil {
			return nil
		}
		if err := flush(); err != nil {
			return err
		}
		return resolveJumps(cur, labels)
	}
	for _, st := range stmts {
		if b, ok := strings.CutPrefix(st.text, "BYTE "); ok && cur != nil {
			v, err := evalAsmExpr(strings.TrimPrefix(strings.TrimSpace(b), "$"))
			if err != nil || v < 0 || v > 255 {
				return nil, fmt.Errorf("%s:%d: %q: not a byte (%v)", asmSourceFile, st.line, st.text, err)
			}
			if len(raw) == 0 {
				rawLine = st.line
			}
			raw = append(raw, byte(v))
			n, err := encodedLen(raw)
			if err != nil {
				return nil, fmt.Errorf("%s:%d: bytes % x: %v", asmSourceFile, rawLine, raw, err)
			}
			if len(raw) == n {
				if err := flush(); err != nil {
					return nil, err
				}
			}
			continue
		}
		if len(raw) > 0 {
			return nil, fmt.Errorf("%s:%d: %d BYTEs do not make a whole instruction", asmSourceFile, rawLine, len(raw))
		}
		if m := asmTextRE.FindStringSubmatch(st.text); m != nil {
			if err := finish(); err != nil {
				return nil, err
			}
			frame, ok := frames[m[1]]
			if !ok {
				return nil, fmt.Errorf("%s:%d: no Go declaration for %s in %s", asmSourceFile, st.line, m[1], asmDeclFile)
			}
			cur = &asmFunc{name: m[1], frame: frame}
			fmt.Sscan(m[3], &cur.argSize)
			if cur.argSize != frameSize(frame) {
				return nil, fmt.Errorf("%s:%d: %s declares $%s-%d, Go declaration needs %d argument bytes", asmSourceFile, st.line, m[1], m[2], cur.argSize, frameSize(frame))
			}
			labels = map[string]int{}
			funcs[cur.name] = cur
			continue
		}
		if strings.HasPrefix(st.text, "TEXT") {
			return nil, fmt.Errorf("%s:%d: unsupported TEXT form %q", asmSourceFile, st.line, st.text)
		}
		if cur == nil {
			return nil, fmt.Errorf("%s:%d: statement outside TEXT: %q", asmSourceFile, st.line, st.text)
		}
		text := st.text
		if m := asmLabelRE.FindStringSubmatch(text); m != nil {
			if _, dup := labels[m[1]]; dup {
				return nil, fmt.Errorf("%s:%d: label %s redefined", asmSourceFile, st.line, m[1])
			}
			labels[m[1]] = len(cur.code)
			if text = m[2]; text == "" {
				continue
			}
		}
		in, err := decodeInstr(text, cur.frame)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %q: %v", asmSourceFile, st.line, text, err)
		}
		in.line = st.line
		cur.code = append(cur.code, in)
	}
	if err := finish(); err != nil {
		return nil, err
	}
	return funcs, nil
}

func resolveJumps(f *asmFunc, labels map[string]int) error {
	for i := range f.code {
		in := &f.code[i]
		if len(in.args) == 1 && in.args[0].kind == kLabel {
			target, ok := labels[in.args[0].name]
			if !ok {
				return fmt.Errorf("%s:%d: %s: undefined label %s", asmSourceFile, in.line, f.name, in.args[0].name)
			}
			in.target = target
		}
	}
	return nil
}

// decodeInstr parses one statement and checks it against asmSpecs.
func decodeInstr(text string, frame []asmFrameSlot) (asmInstr, error) {
	op, rest := text, ""
	if i := strings.IndexAny(text, " \t"); i >= 0 {
		op, rest = text[:i], text[i+1:]
	}
	in := asmInstr{op: op, text: text}
	spec, ok := asmSpecs[op]
	if !ok {
		return in, fmt.Errorf("%s not implemented by the interpreter", op)
	}
	var fields []string
	if rest = strings.TrimSpace(rest); rest != "" {
		fields = splitOperands(rest)
	}
	if len(fields) != len(spec) {
		return in, fmt.Errorf("%s takes %d operands, got %d", op, len(spec), len(fields))
	}
	for i, s := range fields {
		a, err := parseOperand(s, spec[i]&kLabel != 0)
		if err != nil {
			return in, err
		}
		if a.kind&spec[i] == 0 {
			return in, fmt.Errorf("operand %d (%s) has a form %s does not take here", i+1, s, op)
		}
		if a.kind == kFrame {
			if err := checkFrameOperand(a, asmLoadBytes[op], frame); err != nil {
				return in, err
			}
		}
		in.args = append(in.args, a)
	}
	return in, checkWidths(in)
}

// decodeEVEX decodes the one BYTE-encoded instruction kernel_amd64.s
// uses, VDPBF16PS zmm, zmm, zmm (EVEX.512.F3.0F38.W0 52 /r, register form,
// no masking, no broadcast), into Go operand order: src2, src1, dst.
func decodeEVEX(b []byte) (asmInstr, error) {
	in := asmInstr{op: "VDPBF16PS", text: fmt.Sprintf("BYTE % x", b)}
	if len(b) != 6 || b[0] != 0x62 {
		return in, fmt.Errorf("not a 6-byte EVEX instruction")
	}
	p0, p1, p2, op, modrm := b[1], b[2], b[3], b[4], b[5]
	inv := func(x byte, bit uint) int { return int(^x>>bit) & 1 }
	switch {
	case p0&0x0f != 0x02:
		return in, fmt.Errorf("P0 %#02x: want map 0F38 and reserved bits 0", p0)
	case p1&0x87 != 0x06:
		return in, fmt.Errorf("P1 %#02x: want W0, pp F3 and the fixed 1 bit", p1)
	case p2&0xf7 != 0x40:
		return in, fmt.Errorf("P2 %#02x: want z=0, 512-bit, no broadcast, no mask", p2)
	case op != 0x52:
		return in, fmt.Errorf("opcode %#02x: only VDPBF16PS (52) is implemented", op)
	case modrm>>6 != 3:
		return in, fmt.Errorf("ModRM %#02x: only the register form is implemented", modrm)
	}
	dst := inv(p0, 4)<<4 | inv(p0, 7)<<3 | int(modrm>>3&7)
	src1 := inv(p2, 3)<<4 | int(^p1>>3&15)
	src2 := inv(p0, 6)<<4 | inv(p0, 5)<<3 | int(modrm&7)
	z := func(r int) asmOperand { return asmOperand{kind: kVec, reg: r, lanes: 16, name: fmt.Sprintf("Z%d", r)} }
	in.args = []asmOperand{z(src2), z(src1), z(dst)}
	in.text = fmt.Sprintf("VDPBF16PS Z%d, Z%d, Z%d (BYTE % x)", src2, src1, dst, b)
	return in, nil
}

// encodedLen is the length of the BYTE-encoded instruction that raw
// starts, once enough of it is known (0 until then): the 6-byte EVEX
// register form, or a 3-byte-VEX instruction with its ModRM, SIB and
// displacement.
func encodedLen(raw []byte) (int, error) {
	switch raw[0] {
	case 0x62:
		return 6, nil
	case 0xC4:
		if len(raw) < 5 {
			return 0, nil
		}
		modrm := raw[4]
		mod, rm := modrm>>6, modrm&7
		n := 5
		if mod != 3 && rm == 4 {
			n++ // SIB
			if len(raw) < 6 {
				return 0, nil
			}
			if mod == 0 && raw[5]&7 == 5 {
				return 0, fmt.Errorf("SIB without a base is not implemented")
			}
		}
		switch {
		case mod == 1:
			n++
		case mod == 2:
			n += 4
		case mod == 0 && rm == 5:
			return 0, fmt.Errorf("RIP-relative operands are not implemented")
		}
		return n, nil
	}
	return 0, fmt.Errorf("%#02x does not start an instruction this interpreter decodes (EVEX 62, VEX C4)", raw[0])
}

// decodeVEX decodes the AMX instructions kernel_amd64.s writes as BYTEs
// (3-byte VEX, map 0F38, W0, L0): LDTILECFG, TILERELEASE, TILEZERO,
// TILELOADD, TILESTORED and TDPBF16PS, in Go operand order (sources first).
func decodeVEX(b []byte) (asmInstr, error) {
	in := asmInstr{text: fmt.Sprintf("BYTE % x", b)}
	p1, p2, op, modrm := b[1], b[2], b[3], b[4]
	if p1&0x1f != 2 {
		return in, fmt.Errorf("VEX map %d: only 0F38 (2) is implemented", p1&0x1f)
	}
	if p2&0x84 != 0 {
		return in, fmt.Errorf("VEX byte 2 %#02x: want W0 and L0", p2)
	}
	rBit, xBit, bBit := int(^p1>>7&1), int(^p1>>6&1), int(^p1>>5&1)
	vvvv := int(^p2>>3) & 15
	pp := p2 & 3
	mod, reg, rm := modrm>>6, int(modrm>>3&7)|rBit<<3, int(modrm&7)|bBit<<3
	tile := func(r int) (asmOperand, error) {
		if r > 7 {
			return asmOperand{}, fmt.Errorf("tile register %d does not exist", r)
		}
		return asmOperand{kind: kTile, reg: r, name: fmt.Sprintf("TMM%d", r)}, nil
	}
	mem := func() (asmOperand, error) {
		if mod == 3 {
			return asmOperand{}, fmt.Errorf("register form where memory is required")
		}
		a := asmOperand{kind: kMem}
		rest := b[5:]
		if rm&7 == 4 {
			sib := b[5]
			rest = b[6:]
			a.reg = int(sib&7) | bBit<<3
			if idx := int(sib>>3&7) | xBit<<3; idx != 4 {
				a.index, a.scale = idx, 1<<(sib>>6)
			}
		} else {
			a.reg = rm
		}
		switch mod {
		case 1:
			a.off = int64(int8(rest[0]))
		case 2:
			a.off = int64(int32(binary.LittleEndian.Uint32(rest)))
		}
		a.name = fmt.Sprintf("%d(R%d)(R%d*%d)", a.off, a.reg, a.index, a.scale)
		return a, nil
	}
	var err error
	var t0, t1, t2, m asmOperand
	switch {
	case op == 0x49 && pp == 0 && mod == 3 && modrm == 0xC0 && vvvv == 0:
		in.op = "TILERELEASE"
	case op == 0x49 && pp == 0 && reg == 0 && vvvv == 0:
		in.op = "LDTILECFG"
		m, err = mem()
		in.args = []asmOperand{m}
	case op == 0x49 && pp == 3 && mod == 3 && rm&7 == 0 && vvvv == 0:
		in.op = "TILEZERO"
		t0, err = tile(reg)
		in.args = []asmOperand{t0}
	case op == 0x4B && (pp == 3 || pp == 2) && vvvv == 0:
		if m, err = mem(); err == nil {
			t0, err = tile(reg)
		}
		if m.kind == kMem && rm&7 != 4 {
			err = fmt.Errorf("tile loads and stores take a SIB operand")
		}
		if pp == 3 {
			in.op, in.args = "TILELOADD", []asmOperand{m, t0}
		} else {
			in.op, in.args = "TILESTORED", []asmOperand{t0, m}
		}
	case op == 0x5C && pp == 2 && mod == 3:
		in.op = "TDPBF16PS"
		if t0, err = tile(reg); err == nil {
			if t1, err = tile(rm); err == nil {
				t2, err = tile(vvvv)
			}
		}
		in.args = []asmOperand{t2, t1, t0} // Go order: B, A, dst
	default:
		return in, fmt.Errorf("VEX opcode %#02x pp %d ModRM %#02x is not an instruction this interpreter implements", op, pp, modrm)
	}
	if err != nil {
		return in, err
	}
	var names []string
	for _, a := range in.args {
		names = append(names, a.name)
	}
	in.text = fmt.Sprintf("%s %s (BYTE % x)", in.op, strings.Join(names, ", "), b)
	return in, nil
}

// splitOperands splits at commas outside parentheses.
func splitOperands(s string) []string {
	var out []string
	depth, start := 0, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '(':
			depth++
		case ')':
			depth--
		case ',':
			if depth == 0 {
				out = append(out, strings.TrimSpace(s[start:i]))
				start = i + 1
			}
		}
	}
	return append(out, strings.TrimSpace(s[start:]))
}

func parseOperand(s string, labelOK bool) (asmOperand, error) {
	if strings.HasPrefix(s, "$") {
		v, err := evalAsmExpr(s[1:])
		return asmOperand{kind: kImm, off: v, name: s}, err
	}
	if r, ok := asmGPRs[s]; ok {
		return asmOperand{kind: kGPR, reg: r, name: s}, nil
	}
	if m := asmVecRE.FindStringSubmatch(s); m != nil {
		var r int
		fmt.Sscan(m[2], &r)
		return asmOperand{kind: kVec, reg: r, lanes: map[string]int{"X": 4, "Y": 8, "Z": 16}[m[1]], name: s}, nil
	}
	if m := asmFrameRE.FindStringSubmatch(s); m != nil {
		v, err := evalAsmExpr(m[2])
		return asmOperand{kind: kFrame, off: v, name: m[1]}, err
	}
	if m := asmIndexRE.FindStringSubmatch(s); m != nil { // disp(BASE)(INDEX*scale)
		base, err := parseOperand(m[1], false)
		if err != nil || base.kind != kMem {
			return asmOperand{}, fmt.Errorf("memory operand %q: base %q not understood", s, m[1])
		}
		idx, ok := asmGPRs[m[2]]
		if !ok {
			return asmOperand{}, fmt.Errorf("memory operand %q: index %q is not a general register", s, m[2])
		}
		base.index, base.name = idx, s
		fmt.Sscan(m[3], &base.scale)
		return base, nil
	}
	if m := asmMemRE.FindStringSubmatch(s); m != nil {
		r, ok := asmGPRs[m[2]]
		if !ok || strings.HasSuffix(m[1], ")") {
			return asmOperand{}, fmt.Errorf("memory operand %q not supported (base must be a general register, index as (BASE)(INDEX*scale))", s)
		}
		var disp int64
		if strings.TrimSpace(m[1]) != "" {
			var err error
			if disp, err = evalAsmExpr(m[1]); err != nil {
				return asmOperand{}, err
			}
		}
		return asmOperand{kind: kMem, reg: r, off: disp, name: s}, nil
	}
	if labelOK && leadingIdent(s) == s {
		return asmOperand{kind: kLabel, name: s}, nil
	}
	return asmOperand{}, fmt.Errorf("operand %q not understood", s)
}

// checkFrameOperand: name+off(FP) must name the declared argument at that
// offset, and the access must be exactly its size (what go vet's asmdecl
// checks too).
func checkFrameOperand(a asmOperand, size int, frame []asmFrameSlot) error {
	for _, s := range frame {
		if s.name == a.name {
			if int64(s.off) != a.off || s.size != size {
				return fmt.Errorf("%s+%d(FP) is a %d-byte access, but %s is %d bytes at offset %d", a.name, a.off, size, s.name, s.size, s.off)
			}
			return nil
		}
	}
	return fmt.Errorf("no argument named %s", a.name)
}

// checkWidths: vector operands of one instruction have one width.
func checkWidths(in asmInstr) error {
	lanes := 0
	for _, a := range in.args {
		if a.kind == kVec {
			if lanes != 0 && a.lanes != lanes && in.op != "VBROADCASTSS" {
				return fmt.Errorf("mixed vector widths")
			}
			lanes = a.lanes
		}
	}
	if in.op == "VMOVUPS" && in.args[0].kind == kMem && in.args[1].kind == kMem {
		return fmt.Errorf("memory to memory move")
	}
	return nil
}

// lanes is the operation width of a vector instruction: that of its vector
// register operands.
func (in *asmInstr) lanes() int {
	for _, a := range in.args {
		if a.kind == kVec {
			return a.lanes
		}
	}
	return 0
}

// isa names the CPUID feature the instruction's encoding needs. A vector
// instruction is EVEX-encoded (AVX-512) when it uses a zmm register or
// register 16–31, or when it exists only in EVEX form (VPXORD).
func (in *asmInstr) isa() string {
	switch in.op {
	case "LDTILECFG", "TILERELEASE", "TILEZERO", "TILELOADD", "TILESTORED":
		return "AMX-TILE"
	case "TDPBF16PS":
		return "AMX-BF16"
	}
	if !strings.HasPrefix(in.op, "V") {
		return ""
	}
	if in.op == "VZEROUPPER" {
		return "AVX"
	}
	if in.op == "VDPBF16PS" {
		return "AVX512BF16"
	}
	evex := in.op == "VPXORD"
	for _, a := range in.args {
		evex = evex || a.kind == kVec && (a.lanes == 16 || a.reg >= 16)
	}
	switch {
	case !evex && in.op == "VFMADD231PS":
		return "FMA"
	case !evex:
		return "AVX"
	case in.lanes() < 16:
		return "AVX512VL"
	case in.op == "VXORPS":
		return "AVX512DQ" // the zmm form of VXORPS is AVX512DQ, not F
	}
	return "AVX512F"
}

// ----------------------------------------------------------------- memory

// asmRegion is one allocation in the simulated address space.
type asmRegion struct {
	name               string
	base               uint64
	data               []byte
	readable, writable bool
	reads, writes      []int // per-byte access counts
	// writeFirst: a byte may be read only after it was written (C of a
	// kernel that does not load C but rescales what it stored).
	writeFirst bool
}

type asmMemory struct{ regions []*asmRegion }

func (mem *asmMemory) add(name string, base uint64, data []byte, readable, writable bool) *asmRegion {
	r := &asmRegion{name: name, base: base, data: data, readable: readable, writable: writable,
		reads: make([]int, len(data)), writes: make([]int, len(data))}
	mem.regions = append(mem.regions, r)
	return r
}

// access returns the n bytes at addr, which must lie inside one region
// that allows the access.
func (mem *asmMemory) access(addr uint64, n int, write bool) ([]byte, error) {
	verb := "read"
	if write {
		verb = "write"
	}
	for _, r := range mem.regions {
		off := addr - r.base // wraps for addr < base: then fails the test below
		if off > uint64(len(r.data)) || uint64(n) > uint64(len(r.data))-off {
			continue
		}
		if write && !r.writable || !write && !r.readable {
			return nil, fmt.Errorf("%d-byte %s of %s+%d: region %s is not %sable here", n, verb, r.name, off, r.name, verb)
		}
		counts := r.reads
		if write {
			counts = r.writes
		}
		if !write && r.writeFirst {
			for i := off; i < off+uint64(n); i++ {
				if r.writes[i] == 0 {
					return nil, fmt.Errorf("%d-byte read of %s+%d before it was written (it must not be read)", n, r.name, off)
				}
			}
		}
		for i := off; i < off+uint64(n); i++ {
			counts[i]++
		}
		return r.data[off : off+uint64(n)], nil
	}
	return nil, fmt.Errorf("%d-byte %s at %#x is outside every region (%s)", n, verb, addr, mem.describe(addr))
}

// describe names addr relative to the nearest region, for error messages.
func (mem *asmMemory) describe(addr uint64) string {
	best := ""
	var dist uint64 = math.MaxUint64
	for _, r := range mem.regions {
		d := int64(addr - r.base)
		if u := uint64(max(d, -d)); u < dist {
			dist = u
			best = fmt.Sprintf("%s%+d, %s has %d bytes", r.name, d, r.name, len(r.data))
		}
	}
	return best
}

func floatsToBytes(x []float32) []byte {
	b := make([]byte, 4*len(x))
	for i, v := range x {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return b
}

func bytesToFloats(b []byte) []float32 {
	x := make([]float32, len(b)/4)
	for i := range x {
		x[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return x
}

// ----------------------------------------------------------------- machine

// asmMachine is the architectural state the kernels touch.
type asmMachine struct {
	gpr        [16]uint64
	vec        [32][16]uint32 // float32 lanes as bits (XOR and moves keep NaN payloads)
	zf, sf, of bool
	flagsSet   bool // some instruction has defined ZF and SF
	ofSet      bool // OF is defined (shifts by more than 1 leave it undefined)
	mem        *asmMemory
	frame      uint64 // address of 0(FP)

	steps      int
	fmaLanes   int      // float32 FMAs executed, for the peak FLOP count
	prefetches []uint64 // addresses computed by PREFETCH*

	// AMX: the tile configuration (valid after LDTILECFG until
	// TILERELEASE) and the eight tiles, 16 rows of 64 bytes.
	tileCfg   bool
	tileRows  [8]int
	tileColsb [8]int
	tiles     [8][16][64]byte
}

// newAsmMachine starts with every register poisoned: general registers hold
// addresses far from any region, vector lanes hold NaNs. A kernel that uses
// a register before setting it faults or produces NaN.
func newAsmMachine(mem *asmMemory, frame uint64) *asmMachine {
	m := &asmMachine{mem: mem, frame: frame}
	for i := range m.gpr {
		m.gpr[i] = 0x5ead_0000_0000_0000 | uint64(i)<<32
	}
	for r := range m.vec {
		for l := range m.vec[r] {
			m.vec[r][l] = 0x7fc0_0000 | uint32(r)<<8 | uint32(l)
		}
	}
	return m
}

// run executes f from its first instruction to RET. cov, if not nil,
// counts executions per instruction.
func (m *asmMachine) run(f *asmFunc, cov []int) error {
	for pc := 0; ; {
		if pc >= len(f.code) {
			return fmt.Errorf("%s: execution ran off the end of the body", f.name)
		}
		if m.steps++; m.steps > asmMaxSteps {
			return fmt.Errorf("%s: no RET after %d instructions", f.name, asmMaxSteps)
		}
		in := &f.code[pc]
		if cov != nil {
			cov[pc]++
		}
		next, ret, err := m.step(in)
		if err != nil {
			return fmt.Errorf("%s:%d: %s: %v", asmSourceFile, in.line, in.text, err)
		}
		if ret {
			return nil
		}
		if next >= 0 {
			pc = next
		} else {
			pc++
		}
	}
}

// step executes one instruction; next is the jump target or -1.
func (m *asmMachine) step(in *asmInstr) (next int, ret bool, err error) {
	a := in.args
	switch in.op {
	case "MOVQ", "MOVL":
		v, err := m.readScalar(a[0], asmLoadBytes[in.op])
		if in.op == "MOVL" {
			v &= math.MaxUint32 // 32-bit writes zero-extend
		}
		m.gpr[a[1].reg] = v
		return -1, false, err
	case "ADDQ":
		x, y := m.gpr[a[1].reg], m.scalarValue(a[0])
		r := x + y
		m.gpr[a[1].reg] = r
		m.setFlags(r, 64, (^(x^y)&(x^r))>>63 == 1)
	case "ANDQ":
		r := m.gpr[a[1].reg] & m.scalarValue(a[0])
		m.gpr[a[1].reg] = r
		m.setFlags(r, 64, false)
	case "TESTQ":
		m.setFlags(m.gpr[a[1].reg]&m.scalarValue(a[0]), 64, false)
	case "CMPL":
		x, y := uint32(m.gpr[a[0].reg]), uint32(m.scalarValue(a[1]))
		r := x - y
		m.setFlags(uint64(r), 32, (x^y)&(x^r)>>31 == 1)
	case "LDTILECFG", "TILERELEASE", "TILEZERO", "TILELOADD", "TILESTORED", "TDPBF16PS":
		return -1, false, m.amx(in)
	case "DECQ":
		x := m.gpr[a[0].reg]
		m.gpr[a[0].reg] = x - 1
		m.setFlags(x-1, 64, x == 1<<63) // CF is unchanged (and unused)
	case "SHLQ", "SHRQ", "SHLL":
		m.shift(in.op, a[1].reg, uint64(a[0].off))
	case "JMP":
		return in.target, false, nil
	case "JZ", "JNZ", "JLE":
		taken, err := m.condition(in.op)
		if taken {
			return in.target, false, err
		}
		return -1, false, err
	case "RET":
		return -1, true, nil
	case "PREFETCHT0", "PREFETCHT1":
		m.prefetches = append(m.prefetches, m.address(a[0])) // a hint: never faults
	case "VZEROUPPER":
		for r := 0; r < 16; r++ { // bits 128–511 of registers 0–15 only
			clear(m.vec[r][4:])
		}
	default:
		return -1, false, m.vector(in)
	}
	return -1, false, nil
}

// amx executes the tile instructions: the configuration checks of
// LDTILECFG (palette 1, no start row, reserved bytes zero, at most 16 rows
// of 64 bytes), a configured tile for every operand, TDPBF16PS's shape
// rules, and rows and bytes past a tile's shape zeroed, as the hardware
// does (a check failing is the #GP or #UD the CPU would raise).
func (m *asmMachine) amx(in *asmInstr) error {
	a := in.args
	if in.op == "LDTILECFG" {
		b, err := m.mem.access(m.address(a[0]), 64, false)
		if err != nil {
			return err
		}
		if b[0] != 1 || b[1] != 0 {
			return fmt.Errorf("palette %d, start row %d: want palette 1, start row 0", b[0], b[1])
		}
		for i, v := range b {
			if (i >= 2 && i < 16 || i >= 32 && i < 48 || i >= 56) && v != 0 {
				return fmt.Errorf("reserved byte %d of the tile configuration is %#02x", i, v)
			}
		}
		for t := range 8 {
			m.tileColsb[t] = int(binary.LittleEndian.Uint16(b[16+2*t:]))
			m.tileRows[t] = int(b[48+t])
			if m.tileColsb[t] > 64 || m.tileRows[t] > 16 || (m.tileColsb[t] == 0) != (m.tileRows[t] == 0) {
				return fmt.Errorf("tile %d configured %d rows × %d bytes", t, m.tileRows[t], m.tileColsb[t])
			}
		}
		m.tileCfg, m.tiles = true, [8][16][64]byte{}
		return nil
	}
	if in.op == "TILERELEASE" {
		m.tileCfg, m.tiles = false, [8][16][64]byte{}
		m.tileRows, m.tileColsb = [8]int{}, [8]int{}
		return nil
	}
	if !m.tileCfg {
		return fmt.Errorf("%s without a tile configuration (LDTILECFG)", in.op)
	}
	for _, o := range a {
		if o.kind == kTile && m.tileRows[o.reg] == 0 {
			return fmt.Errorf("%s uses unconfigured tile %d", in.op, o.reg)
		}
	}
	switch in.op {
	case "TILEZERO":
		m.tiles[a[0].reg] = [16][64]byte{}
	case "TILELOADD", "TILESTORED":
		memOp, t := a[0], a[1].reg
		if in.op == "TILESTORED" {
			memOp, t = a[1], a[0].reg
		}
		base := m.gpr[memOp.reg] + uint64(memOp.off)
		stride := m.gpr[memOp.index] * uint64(memOp.scale)
		rows, colsb := m.tileRows[t], m.tileColsb[t]
		if in.op == "TILELOADD" {
			m.tiles[t] = [16][64]byte{}
		}
		for r := 0; r < rows; r++ {
			b, err := m.mem.access(base+uint64(r)*stride, colsb, in.op == "TILESTORED")
			if err != nil {
				return fmt.Errorf("row %d: %v", r, err)
			}
			if in.op == "TILELOADD" {
				copy(m.tiles[t][r][:colsb], b)
			} else {
				copy(b, m.tiles[t][r][:colsb])
			}
		}
	case "TDPBF16PS": // Go order: B, A, dst
		tb, ta, td := a[0].reg, a[1].reg, a[2].reg
		if td == ta || td == tb || ta == tb {
			return fmt.Errorf("TDPBF16PS with repeated tiles %d, %d, %d", td, ta, tb)
		}
		M, K, N := m.tileRows[td], m.tileColsb[ta]/4, m.tileColsb[td]/4
		if m.tileRows[ta] != M || m.tileRows[tb] != K || m.tileColsb[tb] != 4*N || K > 16 {
			return fmt.Errorf("TDPBF16PS shapes: dst %d×%d B, A %d×%d B, B %d×%d B", M, 4*N, m.tileRows[ta], 4*K, m.tileRows[tb], m.tileColsb[tb])
		}
		word := func(t, r, c int) uint32 { return binary.LittleEndian.Uint32(m.tiles[t][r][4*c:]) }
		var out [16][64]byte
		for i := 0; i < M; i++ {
			for j := 0; j < N; j++ {
				acc := math.Float32frombits(word(td, i, j))
				for k := 0; k < K; k++ {
					acc = tdpbf16(acc, word(ta, i, k), word(tb, k, j))
				}
				binary.LittleEndian.PutUint32(out[i][4*j:], math.Float32bits(acc))
				m.fmaLanes += 2 * K
			}
		}
		m.tiles[td] = out
	}
	return nil
}

// vector executes the vector instructions.
func (m *asmMachine) vector(in *asmInstr) error {
	a := in.args
	n := in.lanes()
	switch in.op {
	case "VXORPS", "VPXORD":
		x, y := m.vec[a[0].reg], m.vec[a[1].reg]
		var r [16]uint32
		for i := range n {
			r[i] = x[i] ^ y[i]
		}
		m.writeVec(a[2], r)
	case "VMULPS": // dst = src1 · src2
		src2, err := m.vecSource(a[0], n)
		src1 := m.vec[a[1].reg]
		var r [16]uint32
		for i := range n {
			r[i] = math.Float32bits(f32(src1[i]) * f32(src2[i]))
		}
		m.writeVec(a[2], r)
		return err
	case "VFMADD231PS": // dst += src1 · src2, one rounding
		src2, err := m.vecSource(a[0], n)
		if err != nil {
			return err
		}
		src1, dst := m.vec[a[1].reg], m.vec[a[2].reg]
		var r [16]uint32
		for i := range n {
			r[i] = math.Float32bits(fma32(f32(src1[i]), f32(src2[i]), f32(dst[i])))
		}
		m.fmaLanes += n
		m.writeVec(a[2], r)
	case "VDPBF16PS": // dst += src1·src2 over bf16 pairs (dpbf16 per lane)
		src2, src1, dst := m.vec[a[0].reg], m.vec[a[1].reg], m.vec[a[2].reg]
		var r [16]uint32
		for i := range n {
			r[i] = math.Float32bits(dpbf16(f32(dst[i]), src1[i], src2[i]))
		}
		m.fmaLanes += 2 * n
		m.writeVec(a[2], r)
	case "VBROADCASTSS":
		v, err := m.readScalar(a[0], 4)
		var r [16]uint32
		for i := range a[1].lanes {
			r[i] = uint32(v)
		}
		m.writeVec(a[1], r)
		return err
	case "VMOVUPS":
		if a[1].kind == kMem { // store
			b, err := m.mem.access(m.address(a[1]), 4*n, true)
			if err != nil {
				return err
			}
			for i := range n {
				binary.LittleEndian.PutUint32(b[4*i:], m.vec[a[0].reg][i])
			}
			return nil
		}
		r, err := m.vecSource(a[0], n)
		m.writeVec(a[1], r)
		return err
	default:
		return fmt.Errorf("decoded but not executable: %s", in.op) // a gap between asmSpecs and here
	}
	return nil
}

func f32(bits uint32) float32 { return math.Float32frombits(bits) }

// writeVec writes the operand's lanes and zeroes the rest of the register
// up to 512 bits, as every VEX and EVEX register write does.
func (m *asmMachine) writeVec(dst asmOperand, r [16]uint32) {
	clear(r[dst.lanes:])
	m.vec[dst.reg] = r
}

// vecSource reads n lanes from a vector register or memory.
func (m *asmMachine) vecSource(src asmOperand, n int) ([16]uint32, error) {
	var r [16]uint32
	if src.kind == kVec {
		copy(r[:n], m.vec[src.reg][:n])
		return r, nil
	}
	b, err := m.mem.access(m.address(src), 4*n, false)
	if err != nil {
		return r, err
	}
	for i := range n {
		r[i] = binary.LittleEndian.Uint32(b[4*i:])
	}
	return r, nil
}

// address computes a memory or frame operand's address.
func (m *asmMachine) address(op asmOperand) uint64 {
	if op.kind == kFrame {
		return m.frame + uint64(op.off)
	}
	return m.gpr[op.reg] + m.gpr[op.index]*uint64(op.scale) + uint64(op.off)
}

// scalarValue is an immediate or general register operand.
func (m *asmMachine) scalarValue(op asmOperand) uint64 {
	if op.kind == kImm {
		return uint64(op.off)
	}
	return m.gpr[op.reg]
}

// readScalar is scalarValue extended to size-byte loads from memory.
func (m *asmMachine) readScalar(op asmOperand, size int) (uint64, error) {
	if op.kind != kMem && op.kind != kFrame {
		return m.scalarValue(op), nil
	}
	b, err := m.mem.access(m.address(op), size, false)
	if err != nil {
		return 0, err
	}
	if size == 4 {
		return uint64(binary.LittleEndian.Uint32(b)), nil
	}
	return binary.LittleEndian.Uint64(b), nil
}

// setFlags sets ZF and SF from the low bits of r, and OF.
func (m *asmMachine) setFlags(r uint64, bits int, of bool) {
	if bits == 32 {
		r = uint64(int64(int32(r)))
	}
	m.zf, m.sf, m.of = r == 0, int64(r) < 0, of
	m.flagsSet, m.ofSet = true, true
}

// shift executes SHLQ, SHRQ and SHLL by an immediate count.
func (m *asmMachine) shift(op string, reg int, count uint64) {
	x := m.gpr[reg]
	bits, mask := uint64(64), uint64(63)
	if op == "SHLL" {
		bits, mask, x = 32, 31, x&math.MaxUint32
	}
	n := count & mask
	if n == 0 { // flags unchanged; a 32-bit destination is still zero-extended
		m.gpr[reg] = x
		return
	}
	var r uint64
	var cf bool
	if op == "SHRQ" {
		r, cf = x>>n, x>>(n-1)&1 == 1
	} else {
		r, cf = x<<n, x>>(bits-n)&1 == 1
	}
	if bits == 32 {
		r &= math.MaxUint32
	}
	msb := r>>(bits-1)&1 == 1
	of := msb != cf // SHL by 1
	if op == "SHRQ" {
		of = x>>(bits-1)&1 == 1 // SHR by 1: the original sign bit
	}
	m.gpr[reg] = r
	m.setFlags(r, int(bits), of)
	m.ofSet = n == 1
}

// condition evaluates a conditional jump.
func (m *asmMachine) condition(op string) (bool, error) {
	if !m.flagsSet {
		return false, fmt.Errorf("%s reads flags no instruction has set", op)
	}
	switch op {
	case "JZ":
		return m.zf, nil
	case "JNZ":
		return !m.zf, nil
	}
	if !m.ofSet {
		return false, fmt.Errorf("%s reads OF, undefined after the last instruction", op)
	}
	return m.zf || m.sf != m.of, nil // JLE
}

// fma32 returns x·y+z rounded once to float32, as VFMADD231PS computes it.
// float32(math.FMA(x, y, z)) would round twice (to float64, then float32)
// and can be wrong when the first rounding lands on a float32 tie. Here x·y
// is exact in float64 (24+24 ≤ 53 bits), TwoSum gives s+e = x·y+z exactly,
// and s is then rounded to odd, which makes the final rounding to float32
// (24 ≤ 53−2 bits) correct (Boldo & Melquiond, "Emulation of FMA and
// correctly rounded sums: proved algorithms using rounding to odd").
func fma32(x, y, z float32) float32 {
	p, c := float64(x)*float64(y), float64(z)
	s := p + c
	if math.IsInf(s, 0) || math.IsNaN(s) {
		return float32(s)
	}
	bb := s - p
	e := (p - (s - bb)) + (c - bb)
	if e != 0 && math.Float64bits(s)&1 == 0 {
		s = math.Nextafter(s, math.Copysign(math.Inf(1), e))
	}
	return float32(s)
}

// --------------------------------------------------------------- harness

// interpCase is one micro-kernel call.
type interpCase struct {
	k     int
	alpha float32
	load  bool // the tile starts from C (else C is never read)
	ldc   int
	ints  bool // small integers (every result exact) or random floats
}

func (c interpCase) String() string {
	data := "floats"
	if c.ints {
		data = "ints"
	}
	return fmt.Sprintf("k=%d alpha=%g load=%v ldc=%d %s", c.k, c.alpha, c.load, c.ldc, data)
}

// interpCases: depths around the ×4 unroll (k = 0 is outside the documented
// k ≥ 1 but the code handles it: both loops are skipped), starting from 0
// (C must not be read) or from C, four alphas, C stride NR and NR+3.
func interpCases(nr int) []interpCase {
	var cs []interpCase
	for _, ints := range []bool{true, false} {
		for _, k := range []int{0, 1, 2, 3, 4, 5, 7, 8, 13, 64} {
			for _, alpha := range []float32{1, 2, 0.5, -1.5} {
				for _, load := range []bool{false, true} {
					for _, ldc := range []int{nr, nr + 3} {
						cs = append(cs, interpCase{k: k, alpha: alpha, load: load, ldc: ldc, ints: ints})
					}
				}
			}
		}
	}
	return cs
}

// tileData is one call's packed panels and C (with padding past NR).
type tileData struct{ a, b, c []float32 }

// cNaN marks C when the tile does not load it: the kernel must overwrite
// it unread.
const cNaN = 0x7fc0_1234

func newTileData(seed uint64, mr, nr int, tc interpCase) tileData {
	rng := rand.New(rand.NewPCG(seed, uint64(tc.k)))
	val := func() float32 {
		if tc.ints {
			return float32(rng.IntN(17) - 8)
		}
		// Mixed magnitudes 2^-6 … 2^6, so sums cancel and round often.
		v := (1 + rng.Float32()) * float32(math.Ldexp(1, rng.IntN(13)-6))
		if rng.IntN(2) == 0 {
			v = -v
		}
		return v
	}
	d := tileData{a: make([]float32, tc.k*mr), b: make([]float32, tc.k*nr), c: make([]float32, mr*tc.ldc)}
	for _, x := range [][]float32{d.a, d.b} {
		for i := range x {
			x[i] = val()
		}
	}
	for i := range d.c {
		if !tc.load {
			d.c[i] = math.Float32frombits(cNaN)
		} else {
			d.c[i] = val()
		}
	}
	return d
}

// Simulated addresses: far apart, so a stray pointer lands in no region.
const (
	asmFrameBase = 1 << 32
	asmABase     = 2 << 32
	asmBBase     = 3 << 32
	asmCBase     = 4 << 32
)

// interpretKernel runs micro-kernel f on d in simulated memory and returns
// C afterwards. It fails on any access outside the panels and C, on any
// write to the panels or any read of C when the tile does not load it, and it checks
// that every byte of A and B is read exactly once, that exactly the MR×NR
// tile of C is written (once), that prefetches target the tile and that
// the upper vector state is clean at RET.
func interpretKernel(f *asmFunc, mr, nr int, tc interpCase, d tileData, cov []int) ([]float32, error) {
	frame := make([]byte, f.argSize)
	args := map[string]uint64{
		"k": uint64(tc.k), "a": asmABase, "b": asmBBase, "c": asmCBase, "ldc": uint64(tc.ldc),
		"alpha": uint64(math.Float32bits(tc.alpha)), "load": loadArg(tc.load),
	}
	for _, s := range f.frame {
		v, ok := args[s.name]
		if !ok {
			return nil, fmt.Errorf("no value for argument %s", s.name)
		}
		if s.size == 4 {
			binary.LittleEndian.PutUint32(frame[s.off:], uint32(v))
		} else {
			binary.LittleEndian.PutUint64(frame[s.off:], v)
		}
	}
	mem := &asmMemory{}
	mem.add("args", asmFrameBase, frame, true, false)
	ra := mem.add("A", asmABase, floatsToBytes(d.a), true, false)
	rb := mem.add("B", asmBBase, floatsToBytes(d.b), true, false)
	rc := mem.add("C", asmCBase, floatsToBytes(d.c), tc.load, true)
	m := newAsmMachine(mem, asmFrameBase)
	if err := m.run(f, cov); err != nil {
		return nil, err
	}
	for _, r := range []*asmRegion{ra, rb} {
		if i := slices.IndexFunc(r.reads, func(n int) bool { return n != 1 }); i >= 0 {
			return nil, fmt.Errorf("%s byte %d read %d times, want once", r.name, i, r.reads[i])
		}
	}
	if err := checkTileAccess(rc, mr, nr, tc); err != nil {
		return nil, err
	}
	if err := checkPrefetches(m.prefetches, mr, nr, tc.ldc, !tc.load, tc.k); err != nil {
		return nil, err
	}
	for r := 0; r < 16; r++ {
		if slices.ContainsFunc(m.vec[r][4:], func(v uint32) bool { return v != 0 }) {
			return nil, fmt.Errorf("upper half of vector register %d dirty at RET (missing VZEROUPPER?)", r)
		}
	}
	return bytesToFloats(rc.data), nil
}

// checkTileAccess: each byte of the MR×NR tile is written once (and read
// once when the tile loads it); the padding past NR is never touched.
func checkTileAccess(rc *asmRegion, mr, nr int, tc interpCase) error {
	for x := range rc.data {
		i, j := x/4/tc.ldc, x/4%tc.ldc
		wantW, wantR := 0, 0
		if i < mr && j < nr {
			wantW = 1
			if tc.load {
				wantR = 1
			}
		}
		if rc.writes[x] != wantW || rc.reads[x] != wantR {
			return fmt.Errorf("C[%d][%d] byte %d: %d writes, %d reads; want %d, %d", i, j, x%4, rc.writes[x], rc.reads[x], wantW, wantR)
		}
	}
	return nil
}

// checkPrefetches: every prefetch is inside the tile or the next one down
// (rows mr to 2·mr, the tile the macro loop calls the kernel on next, which
// the kernels start fetching); when the tile is not loaded (the stores are
// the first touch) every C row of it is prefetched, and with k ≥ 4·mr (a
// k loop long enough to spread them over) every row of the next tile.
func checkPrefetches(addrs []uint64, mr, nr, ldc int, wantRows bool, k int) error {
	rows := make([]bool, 2*mr)
	for _, p := range addrs {
		off := int64(p - asmCBase)
		i, j := off/4/int64(ldc), off/4%int64(ldc)
		if off < 0 || i >= int64(2*mr) || j >= int64(nr) {
			return fmt.Errorf("prefetch of C%+d is outside the tile and the next", off)
		}
		rows[i] = true
	}
	if i := slices.Index(rows[:mr], false); i >= 0 && wantRows {
		return fmt.Errorf("C row %d is never prefetched", i)
	}
	if i := slices.Index(rows[mr:], false); i >= 0 && k >= 4*mr {
		return fmt.Errorf("row %d of the next tile is never prefetched (k = %d)", i, k)
	}
	return nil
}

// loadArg is the kernels' load argument.
func loadArg(load bool) uint64 {
	if load {
		return 1
	}
	return 0
}

// modelTile is the float32 kernels' arithmetic written out in Go: per
// element, FMA accumulation over p in order from C (load) or +0, then one
// multiply by alpha. The padding is C's.
func modelTile(mr, nr int, tc interpCase, d tileData) []float32 {
	out := slices.Clone(d.c)
	for i := range mr {
		for j := range nr {
			var acc float32
			if tc.load {
				acc = d.c[i*tc.ldc+j]
			}
			for p := range tc.k {
				acc = fma32(d.a[p*mr+i], d.b[p*nr+j], acc)
			}
			out[i*tc.ldc+j] = acc * tc.alpha
		}
	}
	return out
}

// compareBits reports the first element whose bits differ.
func compareBits(got, want []float32, ldc int) error {
	for x := range want {
		if math.Float32bits(got[x]) != math.Float32bits(want[x]) {
			return fmt.Errorf("C[%d][%d] = %g (%#08x), want %g (%#08x)", x/ldc, x%ldc, got[x], math.Float32bits(got[x]), want[x], math.Float32bits(want[x]))
		}
	}
	return nil
}

// compareReference checks got against the float64 triple loop: exactly for
// integer data, within the float32 error bound (k+4)·2⁻²⁴·|alpha|·(Σ|ab| +
// |c|) for random floats. Padding must equal C's.
func compareReference(got []float32, mr, nr int, tc interpCase, d tileData) error {
	for i := range mr {
		for j := range nr {
			x := i*tc.ldc + j
			var s, mag float64
			for p := range tc.k {
				ab := float64(d.a[p*mr+i]) * float64(d.b[p*nr+j])
				s, mag = s+ab, mag+math.Abs(ab)
			}
			if tc.load {
				s, mag = s+float64(d.c[x]), mag+math.Abs(float64(d.c[x]))
			}
			want, mag := float64(tc.alpha)*s, math.Abs(float64(tc.alpha))*mag
			tol := float64(tc.k+4) * 0x1p-24 * mag
			if tc.ints {
				tol = 0
			}
			if diff := math.Abs(float64(got[x]) - want); !(diff <= tol) {
				return fmt.Errorf("C[%d][%d] = %g, reference %g (|diff| %g > %g)", i, j, got[x], want, diff, tol)
			}
		}
	}
	for x := range got {
		if x%tc.ldc >= nr && math.Float32bits(got[x]) != math.Float32bits(d.c[x]) {
			return fmt.Errorf("padding C[%d][%d] changed to %g", x/tc.ldc, x%tc.ldc, got[x])
		}
	}
	return nil
}

// checkAVX512Case interprets kernelAVX512 on one case and checks it against
// the model (bit for bit) and the float64 reference.
func checkAVX512Case(f *asmFunc, idx int, tc interpCase, cov []int) error {
	mr, nr := avx512Kernel.mr, avx512Kernel.nr
	d := newTileData(uint64(idx), mr, nr, tc)
	got, err := interpretKernel(f, mr, nr, tc, d, cov)
	if err != nil {
		return err
	}
	if err := compareBits(got, modelTile(mr, nr, tc, d), tc.ldc); err != nil {
		return fmt.Errorf("vs fused model: %v", err)
	}
	return compareReference(got, mr, nr, tc, d)
}

// requireCoverage fails unless every instruction of f ran in some case.
func requireCoverage(t *testing.T, f *asmFunc, cov []int) {
	t.Helper()
	for i, n := range cov {
		if n == 0 {
			t.Errorf("%s: %s:%d %q never executed by the cases", f.name, asmSourceFile, f.code[i].line, f.code[i].text)
		}
	}
}

// ------------------------------------------------------------------ tests

func TestInterpPreprocessor(t *testing.T) {
	const src = `#include "textflag.h"
// comment
#define INNER(x, r) MOVQ x(SI), r; ADDQ $0x10, r // the x in 0x10 is not the parameter
#define OUTER(o) \
	INNER(o+8, R8); \
	INNER((o)*2-4, BX)
#define NOARGS DECQ CX
#define CALLS_OBJ NOARGS; NOARGS

// func f(n int)
TEXT ·f(SB), NOSPLIT, $0-8
	MOVQ n+0(FP), CX
top:
	OUTER(16)
	CALLS_OBJ
	JNZ top
	RET
`
	stmts, err := preprocessAsm(src)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range stmts {
		got = append(got, fmt.Sprintf("%d:%s", s.line, s.text))
	}
	want := []string{
		"11:TEXT ·f(SB), NOSPLIT, $0-8", "12:MOVQ n+0(FP), CX", "13:top:",
		"14:MOVQ 16+8(SI), R8", "14:ADDQ $0x10, R8", "14:MOVQ (16)*2-4(SI), BX", "14:ADDQ $0x10, BX",
		"15:DECQ CX", "15:DECQ CX", "16:JNZ top", "17:RET",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("expansion:\n got %q\nwant %q", got, want)
	}
	funcs, err := decodeAsm(src, map[string][]asmFrameSlot{"f": {{"n", 0, 8}}})
	if err != nil {
		t.Fatal(err)
	}
	code := funcs["f"].code
	if d0, d1 := code[1].args[0].off, code[3].args[0].off; d0 != 24 || d1 != 28 {
		t.Errorf("displacements %d, %d; want 24, 28", d0, d1)
	}
	idx, err := parseOperand("-8(R10)(R12*4)", false)
	if err != nil || idx.kind != kMem || idx.reg != 10 || idx.index != 12 || idx.scale != 4 || idx.off != -8 {
		t.Errorf("-8(R10)(R12*4) parsed as %+v, %v", idx, err)
	}
	if code[7].target != 1 {
		t.Errorf("JNZ top goes to %d, want 1", code[7].target)
	}
	const text = "TEXT ·f(SB), NOSPLIT, $0-8\n\t"
	for _, bad := range []struct{ src, err string }{
		{text + "VADDPS Y0, Y1, Y2", "VADDPS not implemented"},
		{text + "MOVL n+0(FP), AX", "4-byte access"},
		{text + "MOVQ m+0(FP), AX", "no argument named m"},
		{text + "VMOVUPS (SI)(BX*3), Y0", "not supported"},
		{text + "VMOVUPS (SI)(Y1*4), Y0", "not a general register"},
		{text + "VMULPS Y0, Y1, Z2", "mixed vector widths"},
		{text + "JZ nowhere", "undefined label"},
		{"TEXT ·f(SB), NOSPLIT, $0-16\n", "needs 8 argument bytes"},
		{"#ifdef X\n", "unsupported directive"},
		{"#define M(a, b) a b\n" + text + "M(1)", "takes 2 arguments, got 1"},
	} {
		_, err := decodeAsm(bad.src, map[string][]asmFrameSlot{"f": {{"n", 0, 8}}})
		if err == nil || !strings.Contains(err.Error(), bad.err) {
			t.Errorf("decoding %q: error %v, want one containing %q", bad.src, err, bad.err)
		}
	}
}

// TestInterpFMA32 checks fma32 against exact big.Float arithmetic,
// including a case where rounding to float64 first gives the wrong float32.
func TestInterpFMA32(t *testing.T) {
	exact := func(x, y, z float32) float32 {
		p := new(big.Float).SetPrec(2048).SetFloat64(float64(x))
		p.Mul(p, new(big.Float).SetFloat64(float64(y)))
		p.Add(p, new(big.Float).SetFloat64(float64(z)))
		f, _ := p.Float32()
		return f
	}
	// x·y = 1 + 2⁻¹¹ + 2⁻²⁴ is a float32 tie; +2⁻⁷⁰ breaks it upwards, but
	// float64 rounding drops it and the tie then rounds to even (down).
	x := float32(1 + 0x1p-12)
	z := float32(0x1p-70)
	if naive := float32(math.FMA(float64(x), float64(x), float64(z))); naive == exact(x, x, z) {
		t.Fatalf("test case does not exhibit double rounding")
	}
	if got, want := fma32(x, x, z), exact(x, x, z); got != want {
		t.Fatalf("fma32 tie case = %g, want %g", got, want)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		v := func() float32 {
			return math.Float32frombits(rng.Uint32() & 0xbfffffff) // finite, |v| < 2
		}
		x, y, z := v(), v(), v()
		if z = float32(math.Ldexp(float64(z), -rng.IntN(40))); rng.IntN(4) == 0 {
			z = -x * y * (1 + float32(math.Ldexp(1, -20-rng.IntN(10)))) // near-cancellation
		}
		if got, want := fma32(x, y, z), exact(x, y, z); math.Float32bits(got) != math.Float32bits(want) {
			t.Fatalf("fma32(%g, %g, %g) = %g, want %g", x, y, z, got, want)
		}
	}
}

// TestInterpDecodesFile decodes every TEXT body (executed or not) and
// checks which CPU features each function's encodings need.
func TestInterpDecodesFile(t *testing.T) {
	funcs := loadAsm(t)
	allowed := map[string][]string{
		"kernelAVX2":    {"AVX", "FMA"},
		"fmaLoopAVX2":   {"AVX", "FMA"},
		"kernelAVX512":  {"AVX", "AVX512F", "AVX512VL"}, // what hasAVX512 checks
		"kernelAVX2S":   {"AVX", "FMA"},
		"kernelAVX512S": {"AVX", "AVX512F", "AVX512VL"},
		"kernelAMXBF16": {"AVX", "AVX512F", "AMX-TILE", "AMX-BF16"}, // what amxAvailable checks
		"amxPeakLoop":   {"AMX-TILE", "AMX-BF16"},
		"fmaLoopAVX512": {"AVX", "AVX512F", "AVX512VL"},
		// what hasAVX512BF16 checks
		"kernelAVX512BF16": {"AVX", "AVX512F", "AVX512VL", "AVX512BF16"},
		"dpLoopAVX512BF16": {"AVX", "AVX512F", "AVX512VL", "AVX512BF16"},
	}
	var names []string
	for name := range funcs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		f := funcs[name]
		ops, isas := map[string]int{}, map[string]bool{}
		for _, in := range f.code {
			ops[in.op]++
			if isa := in.isa(); isa != "" {
				isas[isa] = true
				if !slices.Contains(allowed[name], isa) {
					t.Errorf("%s:%d: %s: %q needs %s", asmSourceFile, in.line, name, in.text, isa)
				}
			}
		}
		t.Logf("%s: %d instructions, args %d bytes, features %v, ops %v", name, len(f.code), f.argSize, sortedKeys(isas), ops)
	}
	for name := range allowed {
		if funcs[name] == nil {
			t.Errorf("TEXT ·%s missing from %s", name, asmSourceFile)
		}
	}
}

func sortedKeys(m map[string]bool) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// TestInterpAVX2MatchesNative validates the interpreter: kernelAVX2's
// source, interpreted, must agree bit for bit with the assembled kernel run
// natively, and with the fused model, on every case.
func TestInterpAVX2MatchesNative(t *testing.T) {
	if !hasAVX2() {
		t.Skip("no AVX2+FMA: cannot run the native kernel")
	}
	f := loadAsm(t)["kernelAVX2"]
	mr, nr := avx2Kernel.mr, avx2Kernel.nr
	if mr != 6 || nr != 16 {
		t.Fatalf("avx2Kernel is %d×%d; the source is written for 6×16", mr, nr)
	}
	cov := make([]int, len(f.code))
	cases := interpCases(nr)
	for idx, tc := range cases {
		d := newTileData(uint64(idx), mr, nr, tc)
		got, err := interpretKernel(f, mr, nr, tc, d, cov)
		if err != nil {
			t.Fatalf("%v: %v", tc, err)
		}
		native := slices.Clone(d.c)
		a, b := append(slices.Clone(d.a), 0), append(slices.Clone(d.b), 0) // k = 0 still needs a pointer
		kernelAVX2(tc.k, &a[0], &b[0], &native[0], tc.ldc, int(loadArg(tc.load)), tc.alpha)
		if err := compareBits(got, native, tc.ldc); err != nil {
			t.Fatalf("%v: interpreted vs native: %v", tc, err)
		}
		if err := compareBits(got, modelTile(mr, nr, tc, d), tc.ldc); err != nil {
			t.Fatalf("%v: interpreted vs fused model: %v", tc, err)
		}
		if err := compareReference(got, mr, nr, tc, d); err != nil {
			t.Fatalf("%v: %v", tc, err)
		}
	}
	requireCoverage(t, f, cov)
	t.Logf("%d cases agree bit for bit with the native kernel", len(cases))
}

// TestInterpAVX512 runs the kernel this machine cannot execute.
func TestInterpAVX512(t *testing.T) {
	f := loadAsm(t)["kernelAVX512"]
	mr, nr := avx512Kernel.mr, avx512Kernel.nr
	if mr != 14 || nr != 32 {
		t.Fatalf("avx512Kernel is %d×%d; the source is written for 14×32", mr, nr)
	}
	cov := make([]int, len(f.code))
	cases := interpCases(nr)
	failures := 0
	for idx, tc := range cases {
		if err := checkAVX512Case(f, idx, tc, cov); err != nil {
			t.Errorf("%v: %v", tc, err)
			if failures++; failures == 10 {
				t.FailNow()
			}
		}
	}
	requireCoverage(t, f, cov)
	t.Logf("%d cases checked", len(cases))
}

// TestInterpCatchesMutations shows the AVX-512 checks are sensitive: each
// planted bug in a copy of the source must fail some case.
func TestInterpCatchesMutations(t *testing.T) {
	src, err := os.ReadFile(asmSourceFile)
	if err != nil {
		t.Fatal(err)
	}
	frames, err := goFrames(asmDeclFile)
	if err != nil {
		t.Fatal(err)
	}
	mutations := []struct{ what, old, new string }{
		{"B offset of the 4th unrolled step", "Z_STEP(168, 384)", "Z_STEP(168, 320)"},
		{"A stride of the tail loop", "ADDQ $56, SI", "ADDQ $52, SI"},
		{"row 13 reads row 12's A", "Z_ROW(ao+52, Z3, Z30, Z31)", "Z_ROW(ao+48, Z3, Z30, Z31)"},
		{"last row not stored", "Z_STORE(Z30, Z31)\n\tVZEROUPPER", "VZEROUPPER"},
		{"row 13's right half accumulates into its left", "Z_ROW(ao+52, Z3, Z30, Z31)", "Z_ROW(ao+52, Z3, Z30, Z30)"},
		{"right half uses the left B columns", "VFMADD231PS  Z1, t, acc1", "VFMADD231PS  Z0, t, acc1"},
		{"loaded right half from the left columns", "VMOVUPS 64(R9), acc1", "VMOVUPS (R9), acc1"},
		{"load flag inverted", "JNZ  z_load", "JZ   z_load"},
		{"no VZEROUPPER", "Z_STORE(Z30, Z31)\n\tVZEROUPPER", "Z_STORE(Z30, Z31)"},
		{"accumulator not zeroed", "\tVPXORD Z5, Z5, Z5\n", ""},
	}
	// Each mutation applies to the first occurrence, which must lie in
	// kernelAVX512's body (macros come before every body).
	bodyEnd := strings.Index(string(src), "TEXT ·kernelAVX512BF16(SB)")
	for _, mu := range mutations {
		if i := strings.Index(string(src), mu.old); i < 0 || i > bodyEnd {
			t.Fatalf("mutation %q: %q not found before kernelAVX512BF16 in %s", mu.what, mu.old, asmSourceFile)
		}
		funcs, err := decodeAsm(strings.Replace(string(src), mu.old, mu.new, 1), frames)
		if err != nil {
			t.Fatalf("mutation %q: %v", mu.what, err)
		}
		f := funcs["kernelAVX512"]
		var caught error
		for idx, tc := range interpCases(avx512Kernel.nr) {
			if caught = checkAVX512Case(f, idx, tc, nil); caught != nil {
				t.Logf("%s: caught by %v: %v", mu.what, tc, caught)
				break
			}
		}
		if caught == nil {
			t.Errorf("mutation %q passed every case", mu.what)
		}
	}
}

// TestInterpFMALoops: the peak loops terminate, touch no memory but their
// argument, and do the FMA count MeasurePeak's FLOP formulas assume
// (avx512Kernel.peak: 24·16 per iteration; avx2Kernel.peak: 12·8;
// avx512BF16Kernel.peak: 24 VDPBF16PS of 16 lanes × 2 products).
func TestInterpFMALoops(t *testing.T) {
	funcs := loadAsm(t)
	for _, fl := range []struct {
		name        string
		fmasPerIter int
	}{{"fmaLoopAVX512", 24 * 16}, {"fmaLoopAVX2", 12 * 8}, {"dpLoopAVX512BF16", 24 * 16 * 2}} {
		f := funcs[fl.name]
		for _, n := range []int{-1, 0, 1, 3} {
			frame := make([]byte, f.argSize)
			binary.LittleEndian.PutUint64(frame, uint64(n))
			mem := &asmMemory{}
			args := mem.add("args", asmFrameBase, frame, true, false)
			m := newAsmMachine(mem, asmFrameBase)
			if err := m.run(f, nil); err != nil {
				t.Fatalf("%s(%d): %v", fl.name, n, err)
			}
			if reads := slices.Max(args.reads); reads != 1 || slices.Min(args.reads) != 1 {
				t.Errorf("%s(%d): argument bytes read %v, want each once", fl.name, n, args.reads)
			}
			if want := max(n, 0) * fl.fmasPerIter; m.fmaLanes != want {
				t.Errorf("%s(%d): %d float32 FMAs, want %d", fl.name, n, m.fmaLanes, want)
			}
			t.Logf("%s(%d): %d instructions", fl.name, n, m.steps)
		}
	}
}

// bf16TileData is newTileData for the bf16 kernel: A and B are packed
// words of bf16 pairs (stored as float32 bit patterns), C float32. tiny
// data has magnitudes near 2⁻⁶⁵, so products and sums fall below the
// float32 normal range and the flush-to-zero behaviour is exercised, and
// loaded C values are subnormal.
func bf16TileData(seed uint64, mr, nr int, tc interpCase, tiny bool) tileData {
	rng := rand.New(rand.NewPCG(seed, uint64(tc.k)+99))
	val := func() float32 {
		if tc.ints {
			return float32(rng.IntN(17) - 8)
		}
		e := rng.IntN(13) - 6
		if tiny {
			e = -60 - rng.IntN(8)
		}
		v := (1 + rng.Float32()) * float32(math.Ldexp(1, e))
		if rng.IntN(2) == 0 {
			v = -v
		}
		return v
	}
	d := tileData{a: make([]float32, tc.k*mr), b: make([]float32, tc.k*nr), c: make([]float32, mr*tc.ldc)}
	for _, x := range [][]float32{d.a, d.b} {
		for i := range x {
			x[i] = math.Float32frombits(bf16Pair(val(), val()))
		}
	}
	for i := range d.c {
		switch {
		case !tc.load:
			d.c[i] = math.Float32frombits(cNaN)
		case tiny:
			d.c[i] = math.Float32frombits(uint32(rng.IntN(1<<23)) | uint32(rng.IntN(2))<<31) // subnormal
		default:
			d.c[i] = val()
		}
	}
	return d
}

// modelTileBF16 is the bf16 kernel's arithmetic in Go: dpbf16 per pair in
// order, from C or +0, then one multiply by alpha.
func modelTileBF16(mr, nr int, tc interpCase, d tileData) []float32 {
	out := slices.Clone(d.c)
	for i := range mr {
		for j := range nr {
			var acc float32
			if tc.load {
				acc = d.c[i*tc.ldc+j]
			}
			for p := range tc.k {
				acc = dpbf16(acc, math.Float32bits(d.a[p*mr+i]), math.Float32bits(d.b[p*nr+j]))
			}
			out[i*tc.ldc+j] = acc * tc.alpha
		}
	}
	return out
}

// compareReferenceBF16 checks got against float64 sums of the bf16
// products: exact for integers, within (2k+4)·2⁻²⁴·|alpha|·(Σ|ab| + |c|)
// otherwise (2k roundings; subnormals flushed add at most 2k·2⁻¹²⁶).
func compareReferenceBF16(got []float32, mr, nr int, tc interpCase, d tileData) error {
	for i := range mr {
		for j := range nr {
			x := i*tc.ldc + j
			var s, mag float64
			if tc.load {
				s, mag = float64(d.c[x]), math.Abs(float64(d.c[x]))
			}
			for p := range tc.k {
				aw, bw := math.Float32bits(d.a[p*mr+i]), math.Float32bits(d.b[p*nr+j])
				for _, sh := range []uint{16, 0} {
					ab := float64(math.Float32frombits(aw>>sh<<16)) * float64(math.Float32frombits(bw>>sh<<16))
					s, mag = s+ab, mag+math.Abs(ab)
				}
			}
			want := float64(tc.alpha) * s
			tol := float64(2*tc.k+4)*0x1p-24*math.Abs(float64(tc.alpha))*mag + float64(2*tc.k+1)*0x1p-126
			if tc.ints {
				tol = 0
			}
			if diff := math.Abs(float64(got[x]) - want); !(diff <= tol) {
				return fmt.Errorf("C[%d][%d] = %g, reference %g (|diff| %g > %g)", i, j, got[x], want, diff, tol)
			}
		}
	}
	return nil
}

// TestInterpAVX512BF16 runs the bf16 kernel's source in the interpreter
// against the Go model of VDPBF16PS (bit for bit) and the float64
// reference, and — where this CPU has AVX512-BF16 — against the native
// kernel, which also validates the interpreter's VDPBF16PS (including
// flush-to-zero on the tiny cases).
func TestInterpAVX512BF16(t *testing.T) {
	f := loadAsm(t)["kernelAVX512BF16"]
	mr, nr := avx512BF16Kernel.mr, avx512BF16Kernel.nr
	if mr != 14 || nr != 32 {
		t.Fatalf("avx512BF16Kernel is %d×%d; the source is written for 14×32", mr, nr)
	}
	native := hasAVX512BF16()
	cov := make([]int, len(f.code))
	cases := interpCases(nr)
	n := 0
	for idx, tc := range cases {
		for _, tiny := range []bool{false, true} {
			if tiny && tc.ints {
				continue
			}
			d := bf16TileData(uint64(idx), mr, nr, tc, tiny)
			got, err := interpretKernel(f, mr, nr, tc, d, cov)
			if err != nil {
				t.Fatalf("%v tiny=%v: %v", tc, tiny, err)
			}
			if err := compareBits(got, modelTileBF16(mr, nr, tc, d), tc.ldc); err != nil {
				t.Fatalf("%v tiny=%v: interpreted vs Go model: %v", tc, tiny, err)
			}
			if !tiny {
				if err := compareReferenceBF16(got, mr, nr, tc, d); err != nil {
					t.Fatalf("%v: %v", tc, err)
				}
			}
			if native {
				c := slices.Clone(d.c)
				a, b := append(slices.Clone(d.a), 0), append(slices.Clone(d.b), 0)
				kernelAVX512BF16(tc.k, &a[0], &b[0], &c[0], tc.ldc, int(loadArg(tc.load)), tc.alpha)
				if err := compareBits(got, c, tc.ldc); err != nil {
					t.Fatalf("%v tiny=%v: interpreted vs native: %v", tc, tiny, err)
				}
			}
			n++
		}
	}
	requireCoverage(t, f, cov)
	t.Logf("%d cases checked (native comparison: %v)", n, native)
}
