package dist

import (
	"fmt"
	"net"
	"strconv"
	"time"
)

// Environment variables of a worker (see the package documentation).
const (
	EnvRank              = "MAMBABYTE_RANK"
	EnvWorldSize         = "MAMBABYTE_WORLD_SIZE"
	EnvLocalRank         = "MAMBABYTE_LOCAL_RANK"
	EnvRendezvous        = "MAMBABYTE_RENDEZVOUS"
	EnvRendezvousTimeout = "MAMBABYTE_RENDEZVOUS_TIMEOUT"
)

// DefaultRendezvousTimeout is how long Rendezvous waits for every rank
// when MAMBABYTE_RENDEZVOUS_TIMEOUT is not set.
const DefaultRendezvousTimeout = 5 * time.Minute

// Env is a rank's place in a job.
type Env struct {
	Rank      int    // 0 … World-1
	World     int    // number of ranks
	LocalRank int    // rank among this host's processes: its GPU ordinal
	Addr      string // host:port of rank 0's rendezvous listener
	Timeout   time.Duration
}

// FromEnv reads the worker environment through getenv (os.Getenv). ok is
// false when MAMBABYTE_WORLD_SIZE is not set: the process is not a worker.
// A set but malformed or inconsistent variable is an error naming it.
func FromEnv(getenv func(string) string) (e Env, ok bool, err error) {
	ws := getenv(EnvWorldSize)
	if ws == "" {
		return Env{}, false, nil
	}
	num := func(name string, def int) (int, error) {
		s := getenv(name)
		if s == "" {
			if def >= 0 {
				return def, nil
			}
			return 0, fmt.Errorf("%s is not set (a worker needs %s, %s and %s)", name, EnvRank, EnvWorldSize, EnvRendezvous)
		}
		v, err := strconv.Atoi(s)
		if err != nil || v < 0 {
			return 0, fmt.Errorf("%s=%q: want a non-negative integer", name, s)
		}
		return v, nil
	}
	if e.World, err = num(EnvWorldSize, -1); err != nil {
		return Env{}, true, err
	}
	if e.World < 1 {
		return Env{}, true, fmt.Errorf("%s=%d: the world has at least one rank", EnvWorldSize, e.World)
	}
	if e.Rank, err = num(EnvRank, -1); err != nil {
		return Env{}, true, err
	}
	if e.Rank >= e.World {
		return Env{}, true, fmt.Errorf("%s=%d is not below %s=%d", EnvRank, e.Rank, EnvWorldSize, e.World)
	}
	if e.LocalRank, err = num(EnvLocalRank, e.Rank); err != nil {
		return Env{}, true, err
	}
	e.Addr = getenv(EnvRendezvous)
	if e.World > 1 {
		if e.Addr == "" {
			return Env{}, true, fmt.Errorf("%s is not set: rank 0 listens there and the other ranks connect (host:port)", EnvRendezvous)
		}
		if _, _, err := net.SplitHostPort(e.Addr); err != nil {
			return Env{}, true, fmt.Errorf("%s=%q: want host:port: %v", EnvRendezvous, e.Addr, err)
		}
	}
	e.Timeout = DefaultRendezvousTimeout
	if s := getenv(EnvRendezvousTimeout); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return Env{}, true, fmt.Errorf("%s=%q: want a positive duration such as 90s or 10m", EnvRendezvousTimeout, s)
		}
		e.Timeout = d
	}
	return e, true, nil
}

// Environ returns the variables that describe e to a worker, as
// "NAME=value" strings for exec.Cmd.Env.
func (e Env) Environ() []string {
	v := []string{
		EnvRank + "=" + strconv.Itoa(e.Rank),
		EnvWorldSize + "=" + strconv.Itoa(e.World),
		EnvLocalRank + "=" + strconv.Itoa(e.LocalRank),
		EnvRendezvous + "=" + e.Addr,
	}
	if e.Timeout > 0 {
		v = append(v, EnvRendezvousTimeout+"="+e.Timeout.String())
	}
	return v
}
