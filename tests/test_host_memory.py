"""TensorFlow's generator datasets must not leave malloc returning every freed batch to the
kernel: `recipe.HostMemory` (added by `RobustModel.fit`) puts glibc's thresholds back.

The oracle is the kernel's count of minor page faults: a 1 MiB buffer allocated, written and
freed 64 times faults in 256 fresh pages each time when malloc maps and unmaps it (the state
a ``from_generator`` dataset leaves), and almost none when freed memory is reused.  The check
runs in a fresh process: malloc's settings belong to the whole process.
"""

import platform
import subprocess
import sys
import textwrap

import keras
import pytest

pytestmark = [
    pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                       reason="only TensorFlow's generator datasets change malloc's settings"),
    pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                       reason="glibc's malloc only"),
]

SCRIPT = textwrap.dedent("""
    import ctypes, resource
    import numpy as np
    import keras
    import keras_dyart as kd

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]

    def faults():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(64):
            p = libc.malloc(1 << 20)
            libc.memset(p, 1, 1 << 20)
            libc.free(p)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(64, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 3, size=64)
    def classifier():
        return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                 keras.layers.Dense(3)])
    batches = kd.recipe.ArrayBatches(x, y, batch_size=32)
    faults()
    print("initial", faults())
    plain = classifier()
    plain.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    plain.fit(batches, epochs=1, steps_per_epoch=2, shuffle=False, verbose=0)
    print("plain_fit", faults())
    robust = kd.methods.get("pgd-at", classifier(), eps=0.1, steps=2)
    robust.compile(optimizer="sgd")
    robust.fit(batches, epochs=1, steps_per_epoch=2, shuffle=False, verbose=0)
    print("robust_fit", faults())
""")


def test_fit_on_a_pydataset_keeps_freed_memory_reusable(tmp_path):
    script = tmp_path / "faults.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    counts = dict(line.split() for line in out.stdout.splitlines() if line[:1].isalpha())
    counts = {k: int(v) for k, v in counts.items()}
    # 64 cycles of 256 pages each when every buffer is freshly mapped
    assert counts["initial"] < 1000, counts
    if counts["plain_fit"] < 8000:
        pytest.skip(f"this TensorFlow's generator datasets leave malloc as it was: {counts}")
    assert counts["robust_fit"] < 1000, counts
