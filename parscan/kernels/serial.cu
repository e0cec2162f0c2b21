// The naive baseline: one thread per channel walks the whole sequence, h = a[t] * h + x[t].
// Martin & Cundy's "serial kernel" (Table 1) and the floor every parallel scan must beat.
// Layout: (C, T) time-contiguous when time_stride == 1, (T, C) channel-contiguous when == C.

extern "C" __global__ void serial_scan_f32(const float* a, const float* x, float* h, long long C, long long T,
                                           long long chan_stride, long long time_stride) {
    const long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0.0f;
    for (long long t = 0; t < T; ++t) {
        const long long i = c * chan_stride + t * time_stride;
        s = a[i] * s + x[i];
        h[i] = s;
    }
}
