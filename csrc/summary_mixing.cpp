// CPU kernels for muse_fast.ops.summary_mixing (not written yet).
#include "common.h"

void init_summary_mixing(py::module_& m) { (void)m; }
