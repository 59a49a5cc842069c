package cpu

// Row primitives: the element-wise inner loops of the kernels, over
// contiguous runs of float32. Each has the plain loop here; rows_simd.go
// replaces them with 16-lane versions when the build and the CPU allow.
// They are function variables so that the kernels call whichever is in use.

var (
	// siluRows sets out[i] = silu(x[i]).
	siluRows = siluRowsPlain
	// gateRows sets out[i] = y[i]·silu(z[i]).
	gateRows = gateRowsPlain
	// gateBackRows sets dy[i] = g[i]·silu(z[i]) and dz[i] = g[i]·y[i]·silu'(z[i]).
	gateBackRows = gateBackRowsPlain
	// siluGradRows sets d[i] = g[i]·silu'(x[i]).
	siluGradRows = siluGradRowsPlain
	// softplusRows sets raw[i] += bias[i] and delta[i] = softplus(raw[i]).
	softplusRows = softplusRowsPlain
	// sigmoidMulRows sets d[i] = g[i]·sigmoid(x[i]) and acc[i] += d[i].
	sigmoidMulRows = sigmoidMulRowsPlain
	// mulAddRows sets dst[i] += a[i]·b[i].
	mulAddRows = mulAddRowsPlain
)

func siluRowsPlain(out, x []float32) {
	for i, v := range x {
		out[i] = siluf(v)
	}
}

func gateRowsPlain(out, y, z []float32) {
	for i, v := range z {
		out[i] = y[i] * siluf(v)
	}
}

func gateBackRowsPlain(dy, dz, g, y, z []float32) {
	for i, v := range z {
		dy[i] = g[i] * siluf(v)
		dz[i] = g[i] * y[i] * siluGrad(v)
	}
}

func siluGradRowsPlain(d, g, x []float32) {
	for i, v := range x {
		d[i] = g[i] * siluGrad(v)
	}
}

func softplusRowsPlain(delta, raw, bias []float32) {
	for i := range raw {
		x := raw[i] + bias[i]
		raw[i] = x
		delta[i] = softplus(x)
	}
}

func sigmoidMulRowsPlain(d, acc, g, x []float32) {
	for i, v := range x {
		d[i] = g[i] * sigmoidf(v)
		acc[i] += d[i]
	}
}

func mulAddRowsPlain(dst, a, b []float32) {
	for i := range dst {
		dst[i] += a[i] * b[i]
	}
}
