#include "core/dtype.h"

namespace llmrt {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::Q4_0: return "Q4_0";
    case DType::Q4_1: return "Q4_1";
    case DType::Q5_0: return "Q5_0";
    case DType::Q5_1: return "Q5_1";
    case DType::MXFP4: return "MXFP4";
    case DType::Q8_0: return "Q8_0";
    case DType::Q4_K: return "Q4_K";
    case DType::Q5_K: return "Q5_K";
    case DType::Q6_K: return "Q6_K";
    case DType::Q4_0R: return "Q4_0R";
    case DType::Q4_1R: return "Q4_1R";
    case DType::Q8_0R: return "Q8_0R";
    case DType::Q4_KR: return "Q4_KR";
    case DType::Q5_KR: return "Q5_KR";
    case DType::Q6_KR: return "Q6_KR";
    case DType::MXFP4R: return "MXFP4R";
  }
  return "unknown";
}

}  // namespace llmrt
