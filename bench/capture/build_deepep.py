"""Patch and build DeepEP's intranode-only extension on a lent multi-GPU machine (no RDMA NIC).

    python3 bench/capture/build_deepep.py SRC_DIR

SRC_DIR holds DeepEP's public source at commit e02e4d2 (github deepseek-ai/DeepEP, Sept 2025).
Three patches, each idempotent:
  1. setup.py's NVSHMEM lookup fails (the machine has an NVSHMEM wheel but no NIC: intranode only,
     so low-latency mode is out);
  2. no `-rdc=true` when NVSHMEM is disabled (else `undefined symbol __cudaRegisterLinkedBinary...`
     at import);
  3. the three mask-buffer functions at the end of csrc/deep_ep.cpp call low-latency kernels that
     are not compiled without NVSHMEM: their bodies are wrapped in `#ifndef DISABLE_NVSHMEM`.
Then `TORCH_CUDA_ARCH_LIST=9.0 python setup.py build_ext --inplace`."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def patch(src: Path) -> None:
    setup = src / "setup.py"
    s = setup.read_text()
    s = s.replace('nvshmem_dir = importlib.util.find_spec("nvidia.nvshmem").submodule_search_locations[0]',
                  'raise ModuleNotFoundError("intranode only: no NVSHMEM")')
    s = s.replace("nvcc_flags.extend(['-rdc=true', '--ptxas-options=--register-usage-level=10'])",
                  "nvcc_flags.extend((['-rdc=true'] if not disable_nvshmem else []) + "
                  "['--ptxas-options=--register-usage-level=10'])")
    setup.write_text(s)
    cpp = src / "csrc" / "deep_ep.cpp"
    c = cpp.read_text()
    if "/* patched: mask buffers */" not in c:
        for name in ("low_latency_update_mask_buffer", "low_latency_query_mask_buffer",
                     "low_latency_clean_mask_buffer"):
            m = re.search(r"void Buffer::" + name + r"\([^)]*\) \{\n", c)
            if m is None:
                raise SystemExit(f"deep_ep.cpp: {name} not found (not commit e02e4d2?)")
            end = c.index("\n}\n", m.end())
            body = c[m.end():end]
            c = (c[:m.end()] + "#ifndef DISABLE_NVSHMEM\n" + body + "\n#else\n"
                 '    EP_HOST_ASSERT(false and "NVSHMEM is disabled during compilation");\n#endif'
                 + c[end:])
        c += "\n/* patched: mask buffers */\n"
        cpp.write_text(c)


def main() -> int:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else ".cache/deepep").resolve()
    patch(src)
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST="9.0", MAX_JOBS=os.environ.get("MAX_JOBS", "16"))
    return subprocess.call([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=src, env=env)


if __name__ == "__main__":
    sys.exit(main())
