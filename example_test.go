package mambabyte_test

import (
	"context"
	"fmt"
	"log"
	"strings"

	"github.com/mambabyte/mambabyte"
)

// The checkpoint used here is a small model with random weights kept for
// the tests; any native, HF or mamba_ssm directory loads the same way.
const exampleModel = "testdata/reference/hf_default/model"

func ExampleLoad() {
	m, err := mambabyte.Load(exampleModel)
	if err != nil {
		log.Fatal(err)
	}
	c := m.Config()
	fmt.Printf("%s checkpoint: D %d, L %d, N %d, vocabulary %d\n", m.Format(), c.DModel, c.NLayer, c.DState, c.VocabSize)
	// Output: hf checkpoint: D 64, L 2, N 16, vocabulary 256
}

func ExampleModel_Eval() {
	m, err := mambabyte.Load(exampleModel)
	if err != nil {
		log.Fatal(err)
	}
	text := strings.NewReader("Bits per byte measure how well a model predicts text.")
	res, err := m.Eval(text, mambabyte.EvalOptions{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d bytes scored, %.2f bits per byte\n", res.Bytes, res.BPB)
	// Output: 52 bytes scored, 9.54 bits per byte
}

func ExampleModel_Generate() {
	m, err := mambabyte.Load(exampleModel)
	if err != nil {
		log.Fatal(err)
	}
	var out strings.Builder
	err = m.Generate(context.Background(), []byte("Once upon a time"),
		mambabyte.GenerateOptions{MaxBytes: 12, Greedy: true},
		func(piece []byte) error {
			out.Write(piece) // each piece is whole UTF-8 characters
			return nil
		})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%q\n", out.String())
	// Output: "33\x90\x0e\xba#Z\x96\xed\xed\xed\xb1"
}

func ExampleLoadDefault() {
	m, err := mambabyte.LoadDefault(mambabyte.Options{})
	if err != nil {
		log.Fatal(err)
	}
	var out strings.Builder
	err = m.Generate(context.Background(), []byte("Lighthouse \\Light\"house`\\, n."),
		mambabyte.GenerateOptions{MaxBytes: 60, Greedy: true, Stop: []string{"\n\n"}},
		func(piece []byte) error { out.Write(piece); return nil })
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(out.String())
	// Output: A short or state of being lighted or stated by a light o
}
