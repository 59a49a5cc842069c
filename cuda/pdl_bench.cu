// pdl_bench.cu — the floor under a chained decode step: the time per kernel
// of a CUDA graph of dependent kernels that do almost nothing, launched as
// the step's kernels are (programmatic dependent launch) and plainly.
//
//   make -C cuda pdl_bench && cuda/pdl_bench
//
// Each kernel waits for the one before, reads the 16-byte value it wrote
// (block 0's) and writes its own, so every launch carries a real dependency
// through memory, then (work > 0) keeps its SM busy with a chain of
// multiply-adds: with early launch the next kernel's blocks wait beside it,
// and a difference from the plain chain shows what waiting costs the
// running blocks; in the last column one warp a block waits and a barrier
// holds the others. Printed: µs a kernel for grids of 1 to 528 blocks of
// 256 threads.
#include <cuda_runtime.h>
#include <stdio.h>

#define CU(x)                                                                          \
    do {                                                                               \
        cudaError_t e_ = (x);                                                          \
        if (e_) {                                                                      \
            printf("%s: %s\n", #x, cudaGetErrorString(e_));                            \
            return 1;                                                                  \
        }                                                                              \
    } while (0)

__global__ void k_link(float4 *buf, int i, int early, int work) {
    if (early) asm volatile("griddepcontrol.launch_dependents;");
    if (early < 2 || threadIdx.x < 32) asm volatile("griddepcontrol.wait;" ::: "memory");
    if (early == 2) __syncthreads();  // one warp waits, the barrier holds the rest
    float4 v = buf[(i & 1) * 1024];
    // work dependent multiply-adds, so that a kernel keeps its SM busy
    // while the next one's blocks wait beside it.
    for (int k = 0; k < work; k++) v.x = v.x * 0.999f + v.y;
    v.x += 1.f;
    if (threadIdx.x == 0) buf[((i + 1) & 1) * 1024 + blockIdx.x] = v;
}

int main() {
    const int kernels = 212;  // four a layer, 53 layers
    float4 *buf;
    CU(cudaMalloc(&buf, 2 * 1024 * sizeof(float4)));
    CU(cudaMemset(buf, 0, 2 * 1024 * sizeof(float4)));
    cudaStream_t st;
    CU(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cudaEvent_t a, b;
    CU(cudaEventCreate(&a));
    CU(cudaEventCreate(&b));
    printf("%-8s %-6s %-5s %14s %14s %14s %14s\n", "blocks", "work", "smem", "plain us", "pdl us",
           "pdl+early us", "+1 warp waits");
    // {blocks, work, shared memory KiB a block (120: one block an SM)}
    const int shapes[][3] = {{1, 0, 0},      {12, 0, 0},    {128, 0, 0},
                             {256, 0, 0},    {512, 0, 0},   {528, 0, 0},
                             {128, 2000, 0}, {512, 2000, 0}, {12, 2000, 0},
                             {128, 2000, 120}, {12, 2000, 120}};
    CU(cudaFuncSetAttribute(k_link, cudaFuncAttributeMaxDynamicSharedMemorySize, 120 << 10));
    for (auto &sh : shapes) {
        const int blocks = sh[0], work = sh[1], smem = sh[2] << 10;
        printf("%-8d %-6d %-5d", blocks, work, sh[2]);
        for (int mode = 0; mode < 4; mode++) {
            cudaGraph_t g;
            cudaGraphExec_t ge;
            CU(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
            for (int i = 0; i < kernels; i++) {
                cudaLaunchAttribute attr = {};
                attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
                attr.val.programmaticStreamSerializationAllowed = 1;
                cudaLaunchConfig_t cfg = {};
                cfg.gridDim = dim3(blocks);
                cfg.blockDim = dim3(256);
                cfg.dynamicSmemBytes = smem;
                cfg.stream = st;
                cfg.attrs = &attr;
                cfg.numAttrs = mode > 0 ? 1 : 0;
                CU(cudaLaunchKernelEx(&cfg, k_link, buf, i, mode < 2 ? 0 : mode - 1, work));
            }
            CU(cudaStreamEndCapture(st, &g));
            CU(cudaGraphInstantiate(&ge, g, 0));
            for (int w = 0; w < 3; w++) CU(cudaGraphLaunch(ge, st));
            float best = 1e30f;
            for (int r = 0; r < 20; r++) {
                CU(cudaEventRecord(a, st));
                CU(cudaGraphLaunch(ge, st));
                CU(cudaEventRecord(b, st));
                CU(cudaEventSynchronize(b));
                float ms;
                CU(cudaEventElapsedTime(&ms, a, b));
                if (ms < best) best = ms;
            }
            printf(" %14.2f", best * 1e3f / kernels);
            CU(cudaGraphExecDestroy(ge));
            CU(cudaGraphDestroy(g));
        }
        printf("\n");
    }
    return 0;
}
