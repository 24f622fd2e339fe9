"""The all-to-all backends' names (each a table under a hardware entry's `comm` in data/hardware.toml):
the one place they are written (tests/test_names.py fails on a literal elsewhere). Its own small
module so that command lines import it without the catalogs."""
from __future__ import annotations

NORMAL, INTRANODE, IBGDA, CPU_PROXY, ASCEND_FUSED, PCIE_COPY = (
    "normal", "intranode", "ibgda", "cpu-proxy", "ascend-fused", "pcie-copy")
COMM_BACKENDS = (NORMAL, INTRANODE, IBGDA, CPU_PROXY, ASCEND_FUSED, PCIE_COPY)

__all__ = ["NORMAL", "INTRANODE", "IBGDA", "CPU_PROXY", "ASCEND_FUSED", "PCIE_COPY", "COMM_BACKENDS"]
