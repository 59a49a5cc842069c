// Package dist runs data-parallel training across processes: one process
// per GPU, on one host or several.
//
// # Overview
//
// A job has World processes, the ranks 0 … World-1. Each rank trains the
// same model on its own share of every batch and the ranks average their
// gradients before each optimizer step, so all of them keep the same
// weights. The package has three parts:
//
//   - Env, the launch environment of a rank, read from environment
//     variables (below). `mambabyte train --gpus N` sets them for the
//     workers it starts; another launcher (or a person, one command per
//     GPU) may set them instead.
//   - Rendezvous, which connects the ranks over TCP: rank 0 listens at the
//     rendezvous address, every other rank connects to it, and rank 0
//     checks that each rank agrees on the world size and hands every rank
//     a small blob (NCCL's 128-byte unique id). The connections stay open
//     as a Group, the job's control plane: sums of a few host values
//     (the loss, a stop flag), barriers and broadcasts.
//   - Comm, the communicator the trainer uses: all-reduce of gradient
//     tensors (possibly asynchronous, finished by Wait) plus the Group's
//     host operations. NewNCCL is the product's engine, on GPUs; Single is
//     the one-rank communicator; NewHostComm moves tensors through the
//     Group's TCP connections and exists for tests on machines without
//     GPUs.
//
// # Environment
//
//	MAMBABYTE_RANK                this process's rank, 0 … world-1
//	MAMBABYTE_WORLD_SIZE          number of ranks in the job
//	MAMBABYTE_LOCAL_RANK          rank among the processes of this host: the GPU ordinal it uses (default: the rank)
//	MAMBABYTE_RENDEZVOUS          host:port where rank 0 listens and the others connect
//	MAMBABYTE_RENDEZVOUS_TIMEOUT  how long to wait for every rank to join (Go duration, default 5m)
//
// A process is a worker of a job exactly when MAMBABYTE_WORLD_SIZE is set.
//
// # Invariants
//
// Every rank calls the collective operations (AllReduce, AllReduceHost,
// Barrier, Broadcast) in the same order with the same sizes. Host sums are
// computed once, by rank 0, in rank order, so every rank receives the same
// bits. The Group has no deadline once the rendezvous is over (a rank may
// validate or write a checkpoint for minutes while the others wait); a rank
// that dies closes its connection and the others' next operation fails
// naming it. NCCL operations wait forever on a dead peer; the launcher
// (`mambabyte train --gpus N`) kills the remaining workers when one fails.
package dist
