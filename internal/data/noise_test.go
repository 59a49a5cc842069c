package data

import (
	"bytes"
	"io"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"unicode/utf8"
)

func TestParseNoise(t *testing.T) {
	tests := []struct {
		spec string
		want Noise
		err  string
	}{
		{"drop:0.05", Noise{Drop, 0.05}, ""},
		{"repeat:0.3", Noise{Repeat, 0.3}, ""},
		{"antspeak", Noise{Antspeak, 0}, ""},
		{"uppercase:0.3", Noise{Uppercase, 0.3}, ""},
		{"uppercase", Noise{Uppercase, 1}, ""},
		{"Upper:1", Noise{Uppercase, 1}, ""},
		{"randomcase:0.05", Noise{RandomCase, 0.05}, ""},
		{"random_case:0.05", Noise{RandomCase, 0.05}, ""},
		{"Random-Case", Noise{RandomCase, 1}, ""},
		{"swap:0.3", Noise{Swap, 0.3}, ""},
		{"swap:0", Noise{Swap, 0}, ""},
		{" drop : 1 ", Noise{Drop, 1}, ""},
		{"none", Noise{}, ""},
		{"", Noise{}, ""},
		{"drop", Noise{}, "needs a probability"},
		{"swap", Noise{}, "needs a probability"},
		{"antspeak:0.3", Noise{}, "takes no probability"},
		{"drop:1.5", Noise{}, "not a number in [0, 1]"},
		{"drop:-0.1", Noise{}, "not a number in [0, 1]"},
		{"drop:NaN", Noise{}, "not a number in [0, 1]"},
		{"drop:x", Noise{}, "not a number in [0, 1]"},
		{"typo:0.1", Noise{}, "unknown noise"},
	}
	for _, tt := range tests {
		got, err := ParseNoise(tt.spec)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseNoise(%q) err = %v, want %q", tt.spec, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseNoise(%q) = %+v, %v; want %+v", tt.spec, got, err, tt.want)
			continue
		}
		back, err := ParseNoise(got.String())
		if err != nil || back != got {
			t.Errorf("ParseNoise(%q.String() = %q) = %+v, %v", tt.spec, got.String(), back, err)
		}
	}
}

func mustNoise(t *testing.T, spec string) Noise {
	t.Helper()
	n, err := ParseNoise(spec)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestNoiseExamples(t *testing.T) {
	tests := []struct {
		spec, in, want string
	}{
		{"antspeak", "abc def", " A B C   D E F "},
		{"antspeak", "", ""},
		{"antspeak", "é\n", " É \n "},
		{"uppercase", "Hello, wörld ß", "HELLO, WÖRLD ß"},
		{"drop:1", "anything", ""},
		{"none", "same", "same"},
		{"uppercase:0", "as is", "as is"},
	}
	for _, tt := range tests {
		got := mustNoise(t, tt.spec).Apply([]byte(tt.in), 1)
		if string(got) != tt.want {
			t.Errorf("%s(%q) = %q, want %q", tt.spec, tt.in, got, tt.want)
		}
	}
}

// runesSorted returns the characters (runes, or invalid single bytes) of
// b, sorted.
func runesSorted(b []byte) []string {
	var out []string
	for len(b) > 0 {
		_, n := utf8.DecodeRune(b)
		out = append(out, string(b[:n]))
		b = b[n:]
	}
	slices.Sort(out)
	return out
}

func TestNoiseProperties(t *testing.T) {
	in := text(20000, 7)
	in = append(in, 0xff, 'x', 0xc3, 'y', 0x80) // invalid UTF-8 too
	ascii := bytes.Map(func(r rune) rune {
		if r >= utf8.RuneSelf {
			return 'q'
		}
		return r
	}, in[:20000])
	chars := utf8.RuneCount(in)

	for _, spec := range []string{"drop:0", "repeat:0", "swap:0", "uppercase:0", "randomcase:0"} {
		if got := mustNoise(t, spec).Apply(in, 3); !bytes.Equal(got, in) {
			t.Errorf("%s is not the identity", spec)
		}
	}
	if got, want := mustNoise(t, "uppercase:1").Apply(ascii, 3), bytes.ToUpper(ascii); !bytes.Equal(got, want) {
		t.Errorf("uppercase:1 differs from bytes.ToUpper on ASCII")
	}
	valid := in[:19990]
	for !utf8.Valid(valid) {
		valid = valid[:len(valid)-1]
	}
	if got, want := mustNoise(t, "uppercase:1").Apply(valid, 3), bytes.ToUpper(valid); !bytes.Equal(got, want) {
		t.Errorf("uppercase:1 differs from bytes.ToUpper on UTF-8")
	}

	for _, p := range []float64{0.05, 0.3} {
		for _, seed := range []uint64{1, 2} {
			n := Noise{Swap, p}
			got := n.Apply(in, seed)
			if !slices.Equal(runesSorted(got), runesSorted(in)) {
				t.Errorf("swap:%v changes the multiset of characters", p)
			}
			// Swapped characters move by one place: rate of moved ones ≈ 2p/(1+p).
			moved := 0
			gi, ii := []rune(string(got)), []rune(string(in))
			for i := range ii {
				if gi[i] != ii[i] {
					moved++
				}
			}
			if rate := float64(moved) / float64(len(ii)); rate > 2*p/(1+p)*1.2 || rate < 2*p/(1+p)*0.6 {
				t.Errorf("swap:%v moved %.3f of characters", p, rate)
			}

			got = Noise{Drop, p}.Apply(in, seed)
			if !isSubsequence(got, in) {
				t.Errorf("drop:%v output is not a subsequence of the input", p)
			}
			kept := float64(utf8.RuneCount(got)) / float64(chars)
			if kept < 1-p-0.03 || kept > 1-p+0.03 {
				t.Errorf("drop:%v kept %.3f of characters", p, kept)
			}

			got = Noise{Repeat, p}.Apply(in, seed)
			if !isSubsequence(in, got) {
				t.Errorf("repeat:%v input is not a subsequence of the output", p)
			}
			// Expected extra characters per character: p × 2.
			extra := float64(utf8.RuneCount(got)-chars) / float64(chars)
			if extra < 2*p*0.85 || extra > 2*p*1.15 {
				t.Errorf("repeat:%v added %.3f characters per character, want about %.3f", p, extra, 2*p)
			}

			got = Noise{RandomCase, p}.Apply(ascii, seed)
			if !bytes.Equal(bytes.ToLower(got), bytes.ToLower(ascii)) {
				t.Errorf("randomcase:%v changes more than case", p)
			}
			got = Noise{Uppercase, p}.Apply(ascii, seed)
			if !bytes.Equal(bytes.ToUpper(got), bytes.ToUpper(ascii)) {
				t.Errorf("uppercase:%v changes more than case", p)
			}
			lowers, raised := 0, 0
			for i := range ascii {
				if 'a' <= ascii[i] && ascii[i] <= 'z' {
					lowers++
					if got[i] != ascii[i] {
						raised++
					}
				}
			}
			if r := float64(raised) / float64(lowers); r < p*0.8 || r > p*1.2 {
				t.Errorf("uppercase:%v raised %.3f of lower-case letters", p, r)
			}
		}
	}
	// Antspeak is 2 bytes per character plus the closing space when all
	// characters keep their width.
	if got := mustNoise(t, "antspeak").Apply(ascii, 0); len(got) != 2*len(ascii)+1 {
		t.Errorf("antspeak length %d, want %d", len(got), 2*len(ascii)+1)
	}
}

// isSubsequence reports whether a is a subsequence of b.
func isSubsequence(a, b []byte) bool {
	i := 0
	for j := 0; i < len(a) && j < len(b); j++ {
		if a[i] == b[j] {
			i++
		}
	}
	return i == len(a)
}

func TestNoiseDeterministic(t *testing.T) {
	in := text(5000, 8)
	for _, spec := range []string{"drop:0.3", "repeat:0.3", "uppercase:0.3", "randomcase:0.3", "swap:0.3"} {
		n := mustNoise(t, spec)
		a, b, c := n.Apply(in, 1), n.Apply(in, 1), n.Apply(in, 2)
		if !bytes.Equal(a, b) {
			t.Errorf("%s: same seed, different output", spec)
		}
		if bytes.Equal(a, c) {
			t.Errorf("%s: seeds 1 and 2 give the same output", spec)
		}
	}
}

// TestNoiseReader: the streaming form equals Apply for any chunking,
// including chunks that cut runes in half.
func TestNoiseReader(t *testing.T) {
	in := text(100_000, 9)
	in = append(in, 0xe6, 0x97) // ends inside a rune
	for _, spec := range []string{"none", "drop:0.3", "repeat:0.05", "antspeak", "uppercase:0.3", "randomcase:0.5", "swap:0.3"} {
		n := mustNoise(t, spec)
		want := n.Apply(in, 5)
		readers := map[string]io.Reader{
			"whole":    bytes.NewReader(in),
			"one byte": iotest.OneByteReader(bytes.NewReader(in)),
			"half":     iotest.HalfReader(bytes.NewReader(in)),
			"data+EOF": iotest.DataErrReader(bytes.NewReader(in)),
		}
		for name, r := range readers {
			got, err := io.ReadAll(n.Reader(r, 5))
			if err != nil {
				t.Fatalf("%s %s: %v", spec, name, err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s %s: Reader differs from Apply (%d vs %d bytes)", spec, name, len(got), len(want))
			}
		}
	}
	// Read errors come through after the bytes before them.
	r := io.MultiReader(strings.NewReader("abc"), iotest.ErrReader(io.ErrClosedPipe))
	got, err := io.ReadAll(mustNoise(t, "uppercase").Reader(r, 0))
	if err != io.ErrClosedPipe || string(got) != "ABC" {
		t.Errorf("got %q, %v; want \"ABC\", ErrClosedPipe", got, err)
	}
	if err := iotest.TestReader(mustNoise(t, "swap:0.3").Reader(bytes.NewReader(in), 1), mustNoise(t, "swap:0.3").Apply(in, 1)); err != nil {
		t.Error(err)
	}
}
