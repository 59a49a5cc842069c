package data_test

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/mambabyte/mambabyte/internal/data"
)

func ExampleNoise_Apply() {
	for _, spec := range []string{"antspeak", "uppercase", "swap:0"} {
		n, err := data.ParseNoise(spec)
		if err != nil {
			panic(err)
		}
		fmt.Printf("%-9s %q\n", n, n.Apply([]byte("abc def"), 1))
	}
	// Output:
	// antspeak  " A B C   D E F "
	// uppercase:1 "ABC DEF"
	// swap:0    "abc def"
}

func ExampleOpen() {
	dir, _ := os.MkdirTemp("", "corpus")
	defer os.RemoveAll(dir)
	os.WriteFile(filepath.Join(dir, "a.txt"), []byte("hello, "), 0o644)
	os.WriteFile(filepath.Join(dir, "b.txt"), []byte("world\n"), 0o644)

	c, err := data.Open([]string{dir})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	for _, f := range c.Files() {
		fmt.Println(filepath.Base(f.Path), f.Offset, f.Size, f.Compression)
	}
	buf := make([]byte, 8)
	c.ReadAt(buf, 3) // spans both files
	fmt.Printf("%d bytes, %q\n", c.Size(), buf)
	// Output:
	// a.txt 0 7 plain
	// b.txt 7 6 plain
	// 13 bytes, "lo, worl"
}
