// CPU kernels for muse_fast.ops.mel (not written yet).
#include "common.h"

void init_mel(py::module_& m) { (void)m; }
