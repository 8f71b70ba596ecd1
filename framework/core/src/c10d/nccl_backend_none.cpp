// This LibTorch has no ProcessGroupNCCL (Debian's CPU build): NCCL is refused
// before a group is made (ProcessGroup::join, the YAML check); this is the
// last guard.
#include "nccl_backend.h"

#include <stdexcept>

namespace cairn::c10d_group {

bool nccl_compiled() { return false; }

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>&, int, int,
                                                    std::chrono::milliseconds, int) {
  throw std::logic_error("this LibTorch build has no NCCL (c10d's ProcessGroupNCCL)");
}

}  // namespace cairn::c10d_group
