package cuda

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/ebitengine/purego"
)

// LibName is the file name of the kernel library built by `make -C cuda`.
const LibName = "libmambabyte_cuda.so"

// mb_gemm mode bits (MB_GEMM_A16, MB_GEMM_B16, MB_GEMM_C16): that operand
// is bf16.
const (
	gemmA16 = 2
	gemmB16 = 4
	gemmC16 = 8
)

// abiVersion is the MB_ABI_VERSION of mambabyte_cuda.h this package speaks.
const abiVersion = 16

// lib holds the library's functions, bound once by purego. Sizes are int64
// (int64_t), flags int32 (int), device pointers uintptr, host pointers Go
// slices or pointers (valid for the call only).
type lib struct {
	path string
	// capturing is set between graphBegin and graphEnd (the library's one
	// stream is being recorded).
	capturing bool
	// prof, when not nil, times each operation (profile.go).
	prof *profiler

	abiVersion func() int32
	init       func(device, sync int32) int32
	lastError  func() string
	deviceName func() string

	malloc    func(bytes int64) uintptr
	free      func(p uintptr) int32
	memcpyH2D func(dst uintptr, src []float32, bytes int64) int32
	memcpyD2H func(dst []float32, src uintptr, bytes int64) int32
	memcpyD2D func(dst, src uintptr, bytes int64) int32
	memset    func(dst uintptr, value int32, bytes int64) int32
	sync      func() int32
	memInfo   func(free, total *int64) int32

	graphBegin  func() int32
	graphEnd    func(exec *uintptr) int32
	graphLaunch func(exec uintptr) int32
	graphFree   func(exec uintptr) int32
	stageIDs    func(ids []int32, n int64) int32

	gemmOperandMin func() int64
	gemm           func(transA, transB int32, m, n, k int64, alpha float32, a uintptr, lda int64, b uintptr, ldb int64, beta float32, c uintptr, ldc int64, mode int32) int32

	embedFwd       func(out uintptr, ids []int32, w uintptr, n, D int64) int32
	embedFwdStaged func(out, w uintptr, n, D int64) int32
	embedBwd       func(dw, dout uintptr, ids []int32, n, D int64) int32

	normFwd func(out, mean, rstd, x, w, b uintptr, rows, D int64, eps float32, rms, out16 int32) int32
	normBwd func(dx, dw, db, dout, x, w, mean, rstd uintptr, rows, D int64, rms, copy16 int32) int32

	convFwd   func(u, u16, pre, xi uintptr, ldx int64, prev, w, bias uintptr, B, T, E, K int64) int32
	convBwd   func(dxi uintptr, ldx int64, dw, dbias, du, du2 uintptr, du216 int32, pre, xi, prev, w, bias uintptr, B, T, E, K int64, dxi16 int32) int32
	convState func(next, prev, xi uintptr, ldx, B, T, E, K int64) int32

	dtFwd func(delta, raw, bias uintptr, rows, E int64) int32
	dtBwd func(draw, dbias, ddelta, raw uintptr, rows, E int64) int32

	negExp  func(a, alog uintptr, n int64) int32
	scanFwd func(y, u, delta, bt, ct, a, dskip, s0, sT, ckpt uintptr, dims *scanDims) int32
	scanBwd func(du, ddelta, dbt, dct, dalog, ddskip, dy, u, delta, bt, ct, a, dskip, ckpt uintptr, dims *scanDims) int32

	gateFwd func(out, y, z uintptr, ldz, rows, E int64, out16 int32) int32
	gateBwd func(dy, dz, dout, y, z uintptr, ldz, rows, E int64, dz16 int32) int32
	add     func(dst, src uintptr, n int64) int32

	crossEntropy func(dlogits, nll, logits uintptr, targets []int32, n, V int64, scale float32, sum *float64) int32
	sumSquares   func(x uintptr, n int64, out *float64) int32
	scale        func(x uintptr, s float32, n int64) int32
	adamW        func(param, grad, m, v uintptr, n int64, lr, beta1, beta2, eps, wd, bc1, bc2 float32) int32
	adamWRuns    func(param, grad, m, v uintptr, runs []int64, decay []uint8, nruns int64, lr, beta1, beta2, eps, wd, bc1, bc2 float32) int32

	stepBlock    func(a *stepArgs) int32
	stepFold     func(fold, w uintptr, wtype int32, normW, normB uintptr, rows, D int64) int32
	stepMMACount func() int64
	stepHead     func(logits, h, normW, normB, head, xw uintptr, B, D, V int64, eps float32, rms, wtype int32) int32
	toBF16       func(dst, src uintptr, n int64) int32

	wholePlan func(s *wholeShape, out *wholeLayout) int32
	pack2D    func(dst uintptr, bf16 int32, ld int64, src uintptr, rs, cs, rows, cols int64) int32
	stepWhole func(s *wholeShape, weights, h, state, logits, scratch uintptr) int32
}

// wholeShape is mb_whole_shape.
type wholeShape struct {
	L, D, E, N, K, R, V int64
	eps                 float32
	rms, mode           int32
}

// wholeLayout is mb_whole_layout: byte offsets in the whole step's weight
// buffer.
type wholeLayout struct {
	Dp, Ep, Jp, Rp, Cp                                   int64
	layerBytes                                           int64
	inProj, xProjT, dtProj, outProj, chans, normW, normB int64
	head, normFW, normFB                                 int64
	total                                                int64
	scratchFloats                                        int64
}

// stepArgs is mb_step_args (same field order and sizes).
type stepArgs struct {
	inProj, xProj, dtProj, outProj                  uintptr
	dtProj32                                        uintptr
	inFold                                          uintptr
	normW, normB, convW, convB, dtBias, negA, dskip uintptr
	h, conv, ssm, xz, xdbl, u, g                    uintptr
	xw                                              uintptr
	B, D, E, N, K, R                                int64
	eps                                             float32
	rms, wtype                                      int32
}

// scanDims is mb_scan_dims.
type scanDims struct {
	B, T, E, N, ldbc int64
	dtRaw            int64
	dtBias, dbias    uintptr
	gateZ            uintptr
	ldz              int64
	gateOut          uintptr
	gateOut16        int64
	gateY, gateDz    uintptr
	gateDz16         int64
	ddelta16         int64
}

var (
	loadOnce sync.Once
	theLib   *lib
	loadErr  error
)

// ErrUnavailable is wrapped by the errors of New when the backend cannot
// run here: no library, or no CUDA driver or GPU.
var ErrUnavailable = errors.New("CUDA backend unavailable")

// findLib returns the first existing candidate path for the library:
// $MAMBABYTE_CUDA_LIB, next to the executable, ./cuda/ under the working
// directory, then cuda/ in the enclosing module root (the directory holding
// go.mod, searched upwards from the working directory).
func findLib() (string, []string) {
	var tried []string
	if p := os.Getenv("MAMBABYTE_CUDA_LIB"); p != "" {
		return p, nil
	}
	var cands []string
	if exe, err := os.Executable(); err == nil {
		cands = append(cands, filepath.Join(filepath.Dir(exe), LibName))
	}
	if wd, err := os.Getwd(); err == nil {
		cands = append(cands, filepath.Join(wd, "cuda", LibName))
		for dir := wd; ; {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				cands = append(cands, filepath.Join(dir, "cuda", LibName))
				break
			}
			up := filepath.Dir(dir)
			if up == dir {
				break
			}
			dir = up
		}
	}
	for _, c := range cands {
		tried = append(tried, c)
		if st, err := os.Stat(c); err == nil && !st.IsDir() {
			return c, tried
		}
	}
	return "", tried
}

func loadLib() (*lib, error) {
	loadOnce.Do(func() { theLib, loadErr = openLib() })
	return theLib, loadErr
}

func openLib() (l *lib, err error) {
	path, tried := findLib()
	if path == "" {
		return nil, fmt.Errorf("%w: %s not found (build it with `make -C cuda`; set MAMBABYTE_CUDA_LIB); looked in %v", ErrUnavailable, LibName, tried)
	}
	h, err := purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_GLOBAL)
	if err != nil {
		return nil, fmt.Errorf("%w: load %s: %v (it needs cuBLAS from the CUDA toolkit it was built with; rebuild it with `make -C cuda` or set MAMBABYTE_CUDA_LIB)", ErrUnavailable, path, err)
	}
	// RegisterLibFunc panics on a missing symbol: a library of another
	// version.
	defer func() {
		if r := recover(); r != nil {
			l, err = nil, fmt.Errorf("%w: %s: %v (rebuild it with `make -C cuda`)", ErrUnavailable, path, r)
		}
	}()
	l = &lib{path: path}
	reg := func(fptr any, name string) { purego.RegisterLibFunc(fptr, h, name) }
	reg(&l.abiVersion, "mb_abi_version")
	if v := l.abiVersion(); v != abiVersion {
		return nil, fmt.Errorf("%w: %s implements ABI %d, this program needs %d (rebuild it with `make -C cuda`)", ErrUnavailable, path, v, abiVersion)
	}
	reg(&l.init, "mb_init")
	reg(&l.lastError, "mb_last_error")
	reg(&l.deviceName, "mb_device_name")
	reg(&l.malloc, "mb_malloc")
	reg(&l.free, "mb_free")
	reg(&l.memcpyH2D, "mb_memcpy_h2d")
	reg(&l.memcpyD2H, "mb_memcpy_d2h")
	reg(&l.memcpyD2D, "mb_memcpy_d2d")
	reg(&l.memset, "mb_memset")
	reg(&l.sync, "mb_sync")
	reg(&l.memInfo, "mb_mem_info")
	reg(&l.graphBegin, "mb_graph_begin")
	reg(&l.graphEnd, "mb_graph_end")
	reg(&l.graphLaunch, "mb_graph_launch")
	reg(&l.graphFree, "mb_graph_free")
	reg(&l.stageIDs, "mb_stage_ids")
	reg(&l.gemm, "mb_gemm")
	reg(&l.stepBlock, "mb_step_block")
	reg(&l.stepFold, "mb_step_fold")
	reg(&l.stepMMACount, "mb_step_mma_count")
	reg(&l.stepHead, "mb_step_head")
	reg(&l.toBF16, "mb_to_bf16")
	reg(&l.wholePlan, "mb_whole_plan")
	reg(&l.pack2D, "mb_pack_2d")
	reg(&l.stepWhole, "mb_step_whole")
	reg(&l.embedFwd, "mb_embed_fwd")
	reg(&l.embedFwdStaged, "mb_embed_fwd_staged")
	reg(&l.embedBwd, "mb_embed_bwd")
	reg(&l.gemmOperandMin, "mb_gemm_operand_min")
	reg(&l.normFwd, "mb_norm_fwd")
	reg(&l.normBwd, "mb_norm_bwd")
	reg(&l.convFwd, "mb_conv_fwd")
	reg(&l.convBwd, "mb_conv_bwd")
	reg(&l.convState, "mb_conv_state")
	reg(&l.dtFwd, "mb_dt_fwd")
	reg(&l.dtBwd, "mb_dt_bwd")
	reg(&l.negExp, "mb_negexp")
	reg(&l.scanFwd, "mb_scan_fwd")
	reg(&l.scanBwd, "mb_scan_bwd")
	reg(&l.gateFwd, "mb_gate_fwd")
	reg(&l.gateBwd, "mb_gate_bwd")
	reg(&l.add, "mb_add")
	reg(&l.crossEntropy, "mb_cross_entropy")
	reg(&l.sumSquares, "mb_sum_squares")
	reg(&l.scale, "mb_scale")
	reg(&l.adamW, "mb_adamw")
	reg(&l.adamWRuns, "mb_adamw_runs")
	return l, nil
}

var (
	initMu     sync.Mutex
	initDevice = -1
)

// setup initialises the library on device (once per process; every
// Backend shares it).
func (l *lib) setup(device int, syncEach bool) error {
	initMu.Lock()
	defer initMu.Unlock()
	if initDevice >= 0 && initDevice != device {
		return fmt.Errorf("cuda: already running on device %d, cannot also use %d", initDevice, device)
	}
	s := int32(0)
	if syncEach {
		s = 1
	}
	switch rc := l.init(int32(device), s); rc {
	case 0:
	case 2:
		return fmt.Errorf("%w: %s", ErrUnavailable, l.lastError())
	default:
		return fmt.Errorf("cuda: init: %s", l.lastError())
	}
	initDevice = device
	return nil
}

// check panics with the library's message when an operation failed: a CUDA
// failure inside an operation is a programming or hardware error, and
// backend operations return no errors.
func (l *lib) check(op string, rc int32) {
	if rc != 0 {
		panic(fmt.Sprintf("cuda: %s: %s", op, l.lastError()))
	}
	if l.prof != nil && !l.capturing {
		l.record(op)
	}
}
