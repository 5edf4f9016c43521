"""Launch the fused kernel once on an 800x440x440 volume (for ncu); prints nothing else useful."""

import numpy as np
from numba import cuda
from petfeat.kernels import reduce_gpu

shape = (800, 440, 440)
rng = np.random.default_rng(1)
stored = cuda.to_device(rng.integers(0, 30000, shape, dtype=np.int16).reshape(-1)).reshape(shape)
codes = np.zeros(shape, np.uint8)
codes[100:500, 100:300, 50:350] = 3
codes[400:700, 200:400, 100:200] = 7
codes = cuda.to_device(codes)
launch = reduce_gpu.prepare_fused(stored, codes, rng.uniform(1e-4, 2e-4, 800), np.zeros(800), 11)
launch()
cuda.synchronize()
print("launched", launch.grid, "blocks")
