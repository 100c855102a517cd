#pragma once
// Stand-in for the CUDA library header of this name, for csrc/tests/check_cuda_glue.sh only: declares the
// handle types torch's CUDA headers name, nothing else.
typedef struct cusolverDnContext* cusolverDnHandle_t;
