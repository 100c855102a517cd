// A contiguous stand-in for a tensor that a kernel walks flat; copied back on finish() if it had to be a copy.
#pragma once

#include <ATen/core/Tensor.h>

namespace sparse_rda {

struct Flat {
  at::Tensor original, flat;
  explicit Flat(const at::Tensor& t) : original(t), flat(t.contiguous()) {}
  void finish() {
    if (!flat.is_same(original)) original.copy_(flat);
  }
};

}  // namespace sparse_rda
