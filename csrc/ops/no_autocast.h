// A scope in which torch.autocast does not apply: the native ops choose their own
// precisions (opmath accumulation), and an enclosing autocast region must not recast
// the matrix products inside them.
#pragma once

#include <c10/core/impl/LocalDispatchKeySet.h>

namespace locallearn {

struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

}  // namespace locallearn
