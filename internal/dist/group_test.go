package dist

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// freeAddr returns a loopback address with a port nobody listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// join runs the rendezvous of every rank of envs concurrently.
func join(t *testing.T, envs []Env, blob []byte) ([]*Group, [][]byte, []error) {
	t.Helper()
	n := len(envs)
	gs, blobs, errs := make([]*Group, n), make([][]byte, n), make([]error, n)
	var wg sync.WaitGroup
	for i, e := range envs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var b []byte
			if e.Rank == 0 {
				b = blob
			}
			gs[i], blobs[i], errs[i] = Rendezvous(context.Background(), e, b)
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, g := range gs {
			if g != nil {
				g.Close()
			}
		}
	})
	return gs, blobs, errs
}

func envs(addr string, world int, timeout time.Duration) []Env {
	es := make([]Env, world)
	for r := range es {
		es[r] = Env{Rank: r, World: world, LocalRank: r, Addr: addr, Timeout: timeout}
	}
	return es
}

// newGroups connects world ranks on loopback.
func newGroups(t *testing.T, world int) []*Group {
	t.Helper()
	gs, _, errs := join(t, envs(freeAddr(t), world, 10*time.Second), nil)
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	return gs
}

func TestRendezvousHandsOutTheBlob(t *testing.T) {
	for _, world := range []int{1, 2, 5} {
		blob := make([]byte, UniqueIDLen)
		for i := range blob {
			blob[i] = byte(i*7 + world)
		}
		gs, blobs, errs := join(t, envs(freeAddr(t), world, 10*time.Second), blob)
		for r := range world {
			if errs[r] != nil {
				t.Fatalf("world %d, rank %d: %v", world, r, errs[r])
			}
			if string(blobs[r]) != string(blob) {
				t.Fatalf("world %d, rank %d received %x, want %x", world, r, blobs[r], blob)
			}
			if gs[r].Rank() != r || gs[r].Size() != world {
				t.Fatalf("world %d: group %d says rank %d of %d", world, r, gs[r].Rank(), gs[r].Size())
			}
		}
	}
}

// The other ranks may start before rank 0 listens.
func TestRendezvousWaitsForRankZero(t *testing.T) {
	es := envs(freeAddr(t), 3, 10*time.Second)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	gs := make([]*Group, 3)
	for r := 1; r < 3; r++ {
		wg.Add(1)
		go func() { defer wg.Done(); gs[r], _, errs[r] = Rendezvous(context.Background(), es[r], nil) }()
	}
	time.Sleep(300 * time.Millisecond)
	gs[0], _, errs[0] = Rendezvous(context.Background(), es[0], []byte("id"))
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
		defer gs[r].Close()
	}
}

func TestRendezvousTimesOut(t *testing.T) {
	// Rank 2 of 3 never comes.
	es := envs(freeAddr(t), 3, 500*time.Millisecond)
	_, _, errs := join(t, es[:2], []byte("id"))
	if errs[0] == nil || !strings.Contains(errs[0].Error(), "2 of 3 ranks joined") || !strings.Contains(errs[0].Error(), "missing: 2") {
		t.Errorf("rank 0: %v; want a timeout naming the missing rank 2", errs[0])
	}
	if errs[1] == nil || !strings.Contains(errs[1].Error(), "timed out") {
		t.Errorf("rank 1: %v; want a timeout", errs[1])
	}
	// Nobody listens.
	start := time.Now()
	_, _, err := Rendezvous(context.Background(), Env{Rank: 1, World: 2, Addr: freeAddr(t), Timeout: 400 * time.Millisecond}, nil)
	if err == nil || !strings.Contains(err.Error(), "could not reach rank 0") {
		t.Errorf("no rank 0: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the timeout of 400ms took %v", d)
	}
}

func TestRendezvousRejectsWrongWorldAndRank(t *testing.T) {
	addr := freeAddr(t)
	es := envs(addr, 2, 3*time.Second)
	bad := es[1]
	bad.World = 3
	_, _, errs := join(t, []Env{es[0], bad}, nil)
	for r, want := range []string{"rank 1 says the world size is 3, rank 0 has 2", "refused rank 1: rank 1 says the world size is 3"} {
		if errs[r] == nil || !strings.Contains(errs[r].Error(), want) {
			t.Errorf("rank %d: %v; want %q", r, errs[r], want)
		}
	}

	es = envs(freeAddr(t), 3, 3*time.Second)
	dup := es[1]
	_, _, errs = join(t, []Env{es[0], es[1], dup}, nil)
	if errs[0] == nil || !strings.Contains(errs[0].Error(), "rank 1 joined twice") {
		t.Errorf("duplicate rank: rank 0 says %v", errs[0])
	}
}

// A peer that is not a mambabyte rank, or a rank 0 that answers garbage,
// is refused with a clear error.
func TestRendezvousBadPeers(t *testing.T) {
	addr := freeAddr(t)
	done := make(chan error, 1)
	go func() {
		g, _, err := Rendezvous(context.Background(), Env{Rank: 0, World: 2, Addr: addr, Timeout: 3 * time.Second}, nil)
		if g != nil {
			g.Close()
		}
		done <- err
	}()
	var c net.Conn
	var err error
	for i := 0; i < 50; i++ {
		if c, err = net.Dial("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	if err := <-done; err == nil || !strings.Contains(err.Error(), "not a mambabyte rendezvous peer") {
		t.Errorf("rank 0 after a stray HTTP request: %v", err)
	}
	c.Close()

	// A fake rank 0 that sends a blob longer than the limit.
	var b [9]byte
	copy(b[:], magic)
	binary.LittleEndian.PutUint32(b[5:], maxBlob+1)
	_, _, err = Rendezvous(context.Background(), Env{Rank: 1, World: 2, Addr: fakeRank0(t, b[:]), Timeout: 3 * time.Second}, nil)
	if err == nil || !strings.Contains(err.Error(), "exceeds the limit") {
		t.Errorf("rank 1 given an oversized blob: %v", err)
	}
	// And one with the wrong magic.
	_, _, err = Rendezvous(context.Background(), Env{Rank: 1, World: 2, Addr: fakeRank0(t, []byte("SSH-2\x00\x00\x00\x00")), Timeout: 3 * time.Second}, nil)
	if err == nil || !strings.Contains(err.Error(), "not a mambabyte rendezvous") {
		t.Errorf("rank 1 answered with a bad magic: %v", err)
	}
	// Rank 0 refuses a blob over the limit before listening.
	if _, _, err := Rendezvous(context.Background(), Env{Rank: 0, World: 2, Addr: freeAddr(t)}, make([]byte, maxBlob+1)); err == nil {
		t.Error("an oversized blob was accepted")
	}
}

// runAll runs f on every rank concurrently and returns the errors.
func runAll(gs []*Group, f func(g *Group) error) []error {
	errs := make([]error, len(gs))
	var wg sync.WaitGroup
	for i, g := range gs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = f(g) }()
	}
	wg.Wait()
	return errs
}

func TestGroupCollectives(t *testing.T) {
	const world = 4
	gs := newGroups(t, world)
	got := make([][]float64, world)
	got32 := make([][]float32, world)
	var bc [world][]byte
	errs := runAll(gs, func(g *Group) error {
		r := g.Rank()
		v := []float64{float64(r), 0.1 * float64(r+1), 1e16, -1}
		if err := g.AllReduceFloat64(v, Sum); err != nil {
			return err
		}
		got[r] = v
		w := []float32{float32(r), 1, 0.3}
		if err := g.AllReduceFloat32(w, Avg); err != nil {
			return err
		}
		got32[r] = w
		if err := g.Barrier(); err != nil {
			return err
		}
		b, err := g.Broadcast([]byte(fmt.Sprintf("from rank %d", r)))
		bc[r] = b
		return err
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	// Rank order: ((v0 + v1) + v2) + v3, the same bits everywhere.
	want := []float64{0, 0.1, 1e16, -1}
	for r := 1; r < world; r++ {
		want[0] += float64(r)
		want[1] += 0.1 * float64(r+1)
		want[2] += 1e16
		want[3] += -1
	}
	for r := range world {
		for i := range want {
			if got[r][i] != want[i] {
				t.Errorf("rank %d: sum[%d] = %v, want %v", r, i, got[r][i], want[i])
			}
		}
		if got32[r][0] != 1.5 || got32[r][1] != 1 {
			t.Errorf("rank %d: average %v, want [1.5 1 0.3]", r, got32[r])
		}
		if string(bc[r]) != "from rank 0" {
			t.Errorf("rank %d: broadcast %q", r, bc[r])
		}
	}
}

func TestGroupSizeMismatchAndDeadPeer(t *testing.T) {
	gs := newGroups(t, 3)
	errs := runAll(gs, func(g *Group) error {
		return g.AllReduceFloat64(make([]float64, 2+g.Rank()%2), Sum)
	})
	if errs[0] == nil || !strings.Contains(errs[0].Error(), "rank 1 sent 24 bytes, rank 0 has 16") {
		t.Errorf("rank 0 with mismatched sizes: %v", errs[0])
	}

	gs = newGroups(t, 3)
	gs[2].Close() // rank 2 dies
	errs = runAll(gs[:2], func(g *Group) error { return g.Barrier() })
	if errs[0] == nil || !strings.Contains(errs[0].Error(), "rank 2") || !strings.Contains(errs[0].Error(), "closed") {
		t.Errorf("rank 0 with rank 2 dead: %v", errs[0])
	}
	if errs[1] == nil {
		t.Errorf("rank 1 with rank 2 dead: no error")
	}
}

func TestFromEnv(t *testing.T) {
	env := func(kv ...string) func(string) string {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return func(k string) string { return m[k] }
	}
	if _, ok, err := FromEnv(env()); ok || err != nil {
		t.Fatalf("empty environment: ok %v, err %v", ok, err)
	}
	e, ok, err := FromEnv(env(EnvWorldSize, "4", EnvRank, "3", EnvRendezvous, "node0:29500", EnvRendezvousTimeout, "90s"))
	if !ok || err != nil || e.Rank != 3 || e.World != 4 || e.LocalRank != 3 || e.Addr != "node0:29500" || e.Timeout != 90*time.Second {
		t.Fatalf("got %+v, %v, %v", e, ok, err)
	}
	back, ok, err := FromEnv(env(flatten(e.Environ())...))
	if !ok || err != nil || back != e {
		t.Fatalf("Environ round trip: %+v, want %+v (%v)", back, e, err)
	}
	for _, c := range []struct {
		kv   []string
		want string
	}{
		{[]string{EnvWorldSize, "2", EnvRendezvous, "h:1"}, EnvRank + " is not set"},
		{[]string{EnvWorldSize, "2", EnvRank, "2", EnvRendezvous, "h:1"}, "is not below"},
		{[]string{EnvWorldSize, "two", EnvRank, "0"}, EnvWorldSize + `="two"`},
		{[]string{EnvWorldSize, "0", EnvRank, "0"}, "at least one rank"},
		{[]string{EnvWorldSize, "2", EnvRank, "1"}, EnvRendezvous + " is not set"},
		{[]string{EnvWorldSize, "2", EnvRank, "1", EnvRendezvous, "nohost"}, "want host:port"},
		{[]string{EnvWorldSize, "2", EnvRank, "1", EnvRendezvous, "h:1", EnvRendezvousTimeout, "soon"}, EnvRendezvousTimeout},
		{[]string{EnvWorldSize, "2", EnvRank, "1", EnvLocalRank, "-1", EnvRendezvous, "h:1"}, EnvLocalRank},
	} {
		if _, ok, err := FromEnv(env(c.kv...)); !ok || err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: ok %v, err %v; want an error containing %q", c.kv, ok, err, c.want)
		}
	}
}

func flatten(environ []string) []string {
	var kv []string
	for _, s := range environ {
		k, v, _ := strings.Cut(s, "=")
		kv = append(kv, k, v)
	}
	return kv
}

// fakeRank0 listens on a free local port, takes one rank's hello and
// answers with reply, and returns its address.
func fakeRank0(t *testing.T, reply []byte) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.ReadFull(c, make([]byte, helloLen))
		c.Write(reply)
		time.Sleep(time.Second)
	}()
	return ln.Addr().String()
}
