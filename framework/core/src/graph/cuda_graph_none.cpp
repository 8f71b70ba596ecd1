// CUDA graphs where the LibTorch cannot capture them (1.13, a CPU-only build,
// or 2.x before 2.4): the Trainer asks built() first and trains uncaptured.
#include "cuda_graph.h"

#include <stdexcept>

namespace cairn::detail {

struct CudaGraph::Impl {};

bool CudaGraph::built() { return false; }

std::string CudaGraph::why_not_built() {
  return "this LibTorch cannot capture CUDA graphs (they need a LibTorch 2.4 or newer built with CUDA)";
}

CudaGraph::CudaGraph(c10::Device) { throw std::logic_error("CudaGraph: " + why_not_built()); }
CudaGraph::~CudaGraph() = default;
void CudaGraph::on_side_stream(const std::function<void()>&, bool) { throw std::logic_error(why_not_built()); }
void CudaGraph::capture(const std::function<void()>&) { throw std::logic_error(why_not_built()); }
void CudaGraph::replay() { throw std::logic_error(why_not_built()); }

}  // namespace cairn::detail
