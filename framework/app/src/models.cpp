#include "cairn/models.h"

#include <torch/torch.h>

#include <sstream>

namespace cairn {

namespace nn = torch::nn;

nn::Sequential make_mlp(const MlpOptions& o) {
  nn::Sequential seq;
  seq->push_back(nn::Flatten());
  int64_t in = 1;
  for (auto d : o.input_shape) in *= d;
  for (auto h : o.hidden) {
    seq->push_back(nn::Linear(in, h));
    seq->push_back(nn::ReLU());
    if (o.dropout > 0) seq->push_back(nn::Dropout(o.dropout));
    in = h;
  }
  seq->push_back(nn::Linear(in, o.num_classes));
  return seq;
}

nn::Sequential make_cnn(const CnnOptions& o) {
  if (o.input_shape.size() != 3) throw std::invalid_argument("cnn needs inputs shaped [channels, height, width]");
  nn::Sequential seq;
  int64_t c = o.input_shape[0], h = o.input_shape[1], w = o.input_shape[2];
  for (auto out : o.channels) {
    seq->push_back(nn::Conv2d(nn::Conv2dOptions(c, out, 3).padding(1)));
    seq->push_back(nn::ReLU());
    seq->push_back(nn::MaxPool2d(2));
    c = out;
    h /= 2;
    w /= 2;
  }
  seq->push_back(nn::Flatten());
  seq->push_back(nn::Linear(c * h * w, o.hidden));
  seq->push_back(nn::ReLU());
  if (o.dropout > 0) seq->push_back(nn::Dropout(o.dropout));
  seq->push_back(nn::Linear(o.hidden, o.num_classes));
  return seq;
}

}  // namespace cairn
