// CPU kernels for muse_fast.ops.masking (not written yet).
#include "common.h"

void init_masking(py::module_& m) { (void)m; }
