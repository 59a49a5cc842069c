package data

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// NoiseKind names a noise transform.
type NoiseKind uint8

// Noise transforms of the MambaByte robustness experiments. P is the
// per-character probability where the transform has one.
const (
	NoNoise    NoiseKind = iota // identity
	Drop                        // delete the character with probability P
	Repeat                      // with probability P, follow it by 1–3 copies (uniform)
	Antspeak                    // every character upper-cased and padded with spaces; no P
	Uppercase                   // upper-case the character with probability P
	RandomCase                  // with probability P, set upper or lower case (½ each)
	Swap                        // with probability P, exchange it with the next character
)

var noiseNames = [...]string{
	NoNoise:    "none",
	Drop:       "drop",
	Repeat:     "repeat",
	Antspeak:   "antspeak",
	Uppercase:  "uppercase",
	RandomCase: "randomcase",
	Swap:       "swap",
}

func (k NoiseKind) String() string {
	if int(k) < len(noiseNames) {
		return noiseNames[k]
	}
	return "NoiseKind(" + strconv.Itoa(int(k)) + ")"
}

// Noise is a transform and its probability. The zero value is the
// identity.
type Noise struct {
	Kind NoiseKind
	P    float64
}

// ParseNoise reads "kind" or "kind:p": drop:0.05, repeat:0.3, antspeak,
// uppercase:0.3, randomcase:0.05, swap:0.3, or none. Case and the spellings
// "random_case", "random-case" and "upper" are accepted. Uppercase and
// randomcase without p mean p = 1 (every character, as in ByT5); drop,
// repeat and swap need p; antspeak takes none.
func ParseNoise(spec string) (Noise, error) {
	name, ps, hasP := strings.Cut(strings.TrimSpace(spec), ":")
	name = strings.NewReplacer("_", "", "-", "", " ", "").Replace(strings.ToLower(name))
	var n Noise
	switch name {
	case "", "none":
		n.Kind = NoNoise
	case "drop":
		n.Kind = Drop
	case "repeat":
		n.Kind = Repeat
	case "antspeak":
		n.Kind = Antspeak
	case "uppercase", "upper":
		n.Kind, n.P = Uppercase, 1
	case "randomcase":
		n.Kind, n.P = RandomCase, 1
	case "swap":
		n.Kind = Swap
	default:
		return Noise{}, fmt.Errorf("data: unknown noise %q (want drop, repeat, antspeak, uppercase, randomcase, swap or none)", spec)
	}
	switch {
	case hasP && (n.Kind == Antspeak || n.Kind == NoNoise):
		return Noise{}, fmt.Errorf("data: noise %q takes no probability", spec)
	case hasP:
		p, err := strconv.ParseFloat(strings.TrimSpace(ps), 64)
		if err != nil || math.IsNaN(p) || p < 0 || p > 1 {
			return Noise{}, fmt.Errorf("data: noise %q: probability %q is not a number in [0, 1]", spec, ps)
		}
		n.P = p
	case n.Kind == Drop || n.Kind == Repeat || n.Kind == Swap:
		return Noise{}, fmt.Errorf("data: noise %q needs a probability, e.g. %s:0.05", spec, n.Kind)
	}
	return n, nil
}

// String returns the spec ParseNoise reads back.
func (n Noise) String() string {
	switch n.Kind {
	case NoNoise, Antspeak:
		return n.Kind.String()
	}
	return n.Kind.String() + ":" + strconv.FormatFloat(n.P, 'g', -1, 64)
}

// Apply returns the noised copy of text. The outcome for the i-th input
// character depends only on (seed, i, the character and, for swap, its
// neighbours), so Apply over a whole text equals Reader over any chunking
// of it.
func (n Noise) Apply(text []byte, seed uint64) []byte {
	z := newNoiser(n, seed)
	out := make([]byte, 0, len(text)+len(text)/8)
	out, _ = z.process(out, text, true)
	return z.flush(out)
}

// Reader returns a reader of the noised bytes of r.
func (n Noise) Reader(r io.Reader, seed uint64) io.Reader {
	return &noiseReader{r: r, z: newNoiser(n, seed), in: make([]byte, 32<<10)}
}

// noiser transforms a stream of characters one at a time. A character is a
// UTF-8 encoded rune, or a single byte that is not valid UTF-8; case
// changes apply to runes (unicode.ToUpper/ToLower) and leave invalid bytes
// as they are.
type noiser struct {
	n       Noise
	base    uint64
	i       uint64  // index of the next input character
	held    [4]byte // swap: a character waiting for its right neighbour
	heldLen int
	any     bool // antspeak: a character was written
}

func newNoiser(n Noise, seed uint64) *noiser {
	return &noiser{n: n, base: mix64(seed + 0x6e6f697365)}
}

// uniform returns a number in [0, 1) determined by (seed, character index,
// draw).
func (z *noiser) uniform(i, draw uint64) float64 {
	h := mix64(z.base ^ mix64(i*golden+draw))
	return float64(h>>11) * 0x1p-53
}

// process appends the transform of the characters of src to dst and
// returns the number of bytes used: all of src when atEOF, else all but an
// incomplete trailing rune.
func (z *noiser) process(dst, src []byte, atEOF bool) ([]byte, int) {
	k := 0
	for k < len(src) {
		if !atEOF && src[k] >= utf8.RuneSelf && !utf8.FullRune(src[k:]) {
			break
		}
		r, size := utf8.DecodeRune(src[k:])
		valid := !(r == utf8.RuneError && size == 1)
		dst = z.char(dst, src[k:k+size], r, valid)
		k += size
	}
	return dst, k
}

func (z *noiser) char(dst, c []byte, r rune, valid bool) []byte {
	i := z.i
	z.i++
	switch z.n.Kind {
	case Drop:
		if z.uniform(i, 0) < z.n.P {
			return dst
		}
	case Repeat:
		if z.uniform(i, 0) < z.n.P {
			copies := 2 + int(z.uniform(i, 1)*3) // the character and 1–3 more
			for range copies - 1 {
				dst = append(dst, c...)
			}
		}
	case Antspeak:
		z.any = true
		return appendCase(append(dst, ' '), c, r, valid, true)
	case Uppercase:
		if z.uniform(i, 0) < z.n.P {
			return appendCase(dst, c, r, valid, true)
		}
	case RandomCase:
		if z.uniform(i, 0) < z.n.P {
			if z.uniform(i, 1) < 0.5 {
				return appendCase(dst, c, r, valid, true)
			}
			return appendCase(dst, c, r, valid, false)
		}
	case Swap:
		if z.heldLen > 0 { // c is the right neighbour of a held character
			dst = append(append(dst, c...), z.held[:z.heldLen]...)
			z.heldLen = 0
			return dst
		}
		if z.uniform(i, 0) < z.n.P {
			z.heldLen = copy(z.held[:], c)
			return dst
		}
	}
	return append(dst, c...)
}

// flush ends the stream: a held character has no neighbour to swap with,
// and antspeak closes with a space.
func (z *noiser) flush(dst []byte) []byte {
	if z.heldLen > 0 {
		dst = append(dst, z.held[:z.heldLen]...)
		z.heldLen = 0
	}
	if z.any {
		dst = append(dst, ' ')
		z.any = false
	}
	return dst
}

// appendCase appends c upper-cased (or lower-cased): the rune r mapped by
// unicode.ToUpper (ToLower), or c unchanged when it is not valid UTF-8.
func appendCase(dst, c []byte, r rune, valid, upper bool) []byte {
	if !valid {
		return append(dst, c...)
	}
	if r < utf8.RuneSelf { // ASCII fast path
		if upper && 'a' <= r && r <= 'z' {
			return append(dst, byte(r-'a'+'A'))
		}
		if !upper && 'A' <= r && r <= 'Z' {
			return append(dst, byte(r-'A'+'a'))
		}
		return append(dst, c...)
	}
	m := unicode.ToLower(r)
	if upper {
		m = unicode.ToUpper(r)
	}
	if m != r {
		return utf8.AppendRune(dst, m)
	}
	return append(dst, c...)
}

type noiseReader struct {
	r      io.Reader
	z      *noiser
	in     []byte
	inLen  int // bytes of in not yet processed (an incomplete rune)
	out    []byte
	outPos int
	done   bool
	err    error
}

func (nr *noiseReader) Read(p []byte) (int, error) {
	for nr.outPos == len(nr.out) {
		if nr.done {
			return 0, nr.err
		}
		m, err := nr.r.Read(nr.in[nr.inLen:])
		nr.inLen += m
		atEOF := err != nil
		var used int
		nr.out, used = nr.z.process(nr.out[:0], nr.in[:nr.inLen], atEOF)
		nr.outPos = 0
		nr.inLen = copy(nr.in, nr.in[used:nr.inLen])
		if atEOF {
			nr.out = nr.z.flush(nr.out)
			nr.done, nr.err = true, err
		}
	}
	k := copy(p, nr.out[nr.outPos:])
	nr.outPos += k
	return k, nil
}
