// CPU kernels for muse_fast.ops.quantize (not written yet).
#include "common.h"

void init_quantize(py::module_& m) { (void)m; }
