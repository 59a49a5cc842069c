// Package data reads byte corpora for training and evaluating MambaByte
// models: a corpus made of files, its split into training and validation
// bytes, random training windows, fixed validation windows, and the noise
// transforms of the paper's robustness experiments.
//
// # Overview
//
// Glossary (as DESIGN.md §2): B windows per batch, T context bytes; a
// window holds T+1 bytes, the first T are inputs and the last T their
// next-byte targets.
//
//	c, err := data.Open([]string{"books/", "extra/*.txt.gz", "gcide.dz"},
//		data.WithCacheDir(dir))            // files, directories, globs
//	defer c.Close()
//	sp, err := c.Split(0.01, 0)            // or NewSplit(c, SplitConfig{...})
//	sm, err := sp.Sampler(B, T, seed)      // training windows
//	buf := make([]byte, B*(T+1))
//	err = sm.Batch(buf, step, micro)       // windows of (step, micro)
//	offs, err := sp.ValidationWindows(T, 10<<20) // fixed validation windows
//	err = c.ReadWindows(vbuf, offs[i:i+B], T+1)
//
// `mambabyte train` opens the corpus, splits it, and asks the sampler for
// batch (step, micro) at each optimizer step and micro-batch; on resume it
// needs only the step number. `mambabyte eval` scores ValidationWindows
// (the same windows every time for the same corpus, split and T), or reads
// whole validation ranges (Split.Validation) or whole files
// (io.NewSectionReader(c, f.Offset, f.Size) for f in c.Files()) as
// continuous streams, optionally through Noise.Reader.
//
// # Corpus
//
// A Corpus is the uncompressed bytes of its files back to back, nothing in
// between, in the order Open found them. Nothing is loaded into memory:
// plain files are read with ReadAt through a small pool of open
// descriptors; dictzip (.dz) files through their chunk index, keeping a few
// decompressed chunks; gzip (.gz) files, which cannot be read at random,
// are decompressed once into a cache file that is then read like a plain
// file. A window may span a file boundary: the model then sees the end of
// one file followed by the start of the next, as in a concatenated corpus
// such as enwik8. The share of such windows is about (files·T)/corpus size.
//
// # Split rule
//
// The stream is cut into nb blocks of BlockSize bytes (1 MiB; the last
// block may be shorter). When the corpus holds fewer than 32 blocks, the
// block size shrinks to ⌈size/32⌉ (but not below MinBlockSize), so that
// small corpora still get a validation part. Of the nb blocks, nv =
// clamp(round(ValFraction·nb), 1, nb-1) are validation blocks, spread as
// evenly as integers allow:
//
//	block i is validation  ⇔  ⌊((i+1)·nv + φ)/nb⌋ > ⌊(i·nv + φ)/nb⌋
//
// with phase φ = SplitMix64(Seed ^ 0x5eed5b117) mod nb. Exactly nv blocks
// qualify, consecutive ones about nb/nv blocks apart, so validation samples
// every part of the corpus (every file, for a corpus of many). The rule
// depends only on the corpus size, BlockSize, MinBlockSize, ValFraction and
// Seed, never on the bytes or on the machine. Adding files changes nb and
// so the split.
//
// # Training windows
//
// Sampler draws window starts uniformly from the positions whose whole
// window of T+1 bytes lies in training blocks (a window never touches a
// validation byte, though it may span adjacent training blocks and files).
// The start of window (step, micro, row) is SplitMix64-hashed from (seed,
// step, micro, row) and mapped onto the count of valid starts by a 128-bit
// multiply: no sampler state exists, so resuming at step s needs only s.
//
// # Validation windows
//
// ValidationWindows lays windows of T+1 bytes every T bytes along each
// validation range, so each validation byte after a range's first is a
// target at most once, and keeps an evenly spread subset when a byte
// budget is given. For exact scoring with carried state use the ranges of
// Split.Validation as whole documents instead.
//
// # Noise
//
// The MambaByte paper (Wang et al., arXiv 2401.13660, COLM 2024) measures
// robustness under drop, repeat, antspeak, uppercase, random case and swap
// noise at p = 0.05 and 0.3. Drop, repetitions, antspeak, uppercase and
// random case are the noise types of ByT5 (Xue et al., 2022, §6); the
// definitions here follow ByT5's, with its fixed rates replaced by P.
// Swap (exchange of neighbouring characters) and the per-character P of
// uppercase and random case are this package's reading of the paper's
// table, not text quoted from it. Per character, with probability P:
//
//	drop        the character is deleted
//	repeat      the character is followed by 1, 2 or 3 copies (equally likely)
//	uppercase   the character is upper-cased
//	randomcase  the character is set to upper or lower case (½ each)
//	swap        the character and the next one change places (each
//	            character takes part in at most one swap)
//	antspeak    (no P) every character is upper-cased and the characters
//	            are separated and surrounded by spaces: "abc def" becomes
//	            " A B C   D E F "
//
// A character is a UTF-8 encoded rune, or one byte that is not valid
// UTF-8 (bytes are bytes: such a byte is dropped, repeated or swapped like
// any character, and left as it is by case changes). Case mapping is
// unicode.ToUpper/ToLower per rune, so uppercase:1 on valid UTF-8 equals
// bytes.ToUpper. Decisions are counter-based: the random numbers for input
// character i depend on (seed, i) only, so Noise.Apply and Noise.Reader
// give the same bytes for any chunking of the input.
//
// # Invariants
//
// Corpus, Split and Sampler methods are safe for concurrent use. Errors
// that come from outside (files, specs, sizes) are returned and name the
// file or spec; a wrong buffer length or a negative index is a programming
// error and panics.
package data
