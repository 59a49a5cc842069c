package data

import (
	"os"
	"sync"
)

// filePool keeps at most max files open, closing the least recently used
// idle one when it has to open another, so that a corpus of many thousands
// of files does not hold as many descriptors. It is safe for concurrent use.
type filePool struct {
	mu     sync.Mutex
	max    int
	tick   uint64
	open   map[string]*pooledHandle
	closed bool
}

type pooledHandle struct {
	path string
	f    *os.File
	refs int
	used uint64
}

func newFilePool(max int) *filePool {
	return &filePool{max: max, open: make(map[string]*pooledHandle)}
}

func (p *filePool) acquire(path string) (*pooledHandle, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, os.ErrClosed
	}
	if h, ok := p.open[path]; ok {
		h.refs++
		p.tick++
		h.used = p.tick
		p.mu.Unlock()
		return h, nil
	}
	p.mu.Unlock()
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		f.Close()
		return nil, os.ErrClosed
	}
	h, ok := p.open[path]
	if ok {
		f.Close() // another goroutine opened it meanwhile
	} else {
		h = &pooledHandle{path: path, f: f}
		p.open[path] = h
	}
	h.refs++
	p.tick++
	h.used = p.tick
	p.evictLocked()
	return h, nil
}

func (p *filePool) release(h *pooledHandle) {
	p.mu.Lock()
	h.refs--
	p.evictLocked()
	p.mu.Unlock()
}

// evictLocked closes idle files, least recently used first, while more
// than max are open.
func (p *filePool) evictLocked() {
	for len(p.open) > p.max {
		var lru *pooledHandle
		for _, h := range p.open {
			if h.refs == 0 && (lru == nil || h.used < lru.used) {
				lru = h
			}
		}
		if lru == nil {
			return // all busy; close later
		}
		lru.f.Close()
		delete(p.open, lru.path)
	}
}

// closeAll closes the pool's files; reads after it (and reads under way)
// fail.
func (p *filePool) closeAll() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	var first error
	for path, h := range p.open {
		if err := h.f.Close(); err != nil && first == nil {
			first = err
		}
		delete(p.open, path)
	}
	return first
}

// pooledFile is an io.ReaderAt over a file opened through a filePool.
type pooledFile struct {
	pool *filePool
	path string
}

func (pf pooledFile) ReadAt(b []byte, off int64) (int, error) {
	h, err := pf.pool.acquire(pf.path)
	if err != nil {
		return 0, err
	}
	n, err := h.f.ReadAt(b, off)
	pf.pool.release(h)
	return n, err
}
