// CPU kernels for muse_fast.ops.nt_xent (not written yet).
#include "common.h"

void init_nt_xent(py::module_& m) { (void)m; }
