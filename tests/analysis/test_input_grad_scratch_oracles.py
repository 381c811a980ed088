"""The scratch a frozen convolution's input gradient allocates (deepslim.analysis._training_trace.input_grad_scratch),
worked out by hand for a 1x1 convolution: strided in either direction it goes to oneDNN (blocked copies of the
input, the output gradient and the weight), unstrided on one thread to the native kernel (one input-sized buffer)."""

import pytest
import torch

from deepslim.analysis._training_trace import input_grad_scratch


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN not built in")
@pytest.mark.parametrize("stride", [(2, 1), (1, 2), 2])
def test_a_strided_1x1_convolution_goes_to_onednn_with_blocked_copies(one_thread, stride):
    x = torch.zeros(2, 12, 4, 4)  # 1,536 B; blocked to 16 channels: 2,048 B
    w = torch.zeros(8, 12, 1, 1)  # blocked 16 x 16: 1,024 B
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    grad = torch.zeros(2, 8, 4 // sh, 4 // sw)  # 8 channels, blocked to 16
    blocked_grad = grad.numel() // 8 * 16 * 4
    expected = max(2048, blocked_grad + 1024 + 2048 - 1536)
    assert input_grad_scratch(x, w, grad, stride, 1, 1) == expected


def test_an_unstrided_1x1_convolution_of_a_small_batch_on_one_thread_needs_one_input_sized_buffer(one_thread):
    x, w, grad = torch.zeros(2, 12, 4, 4), torch.zeros(8, 12, 1, 1), torch.zeros(2, 8, 4, 4)
    assert input_grad_scratch(x, w, grad, 1, (1, 1), 1) == 1536


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN not built in")
@pytest.mark.parametrize(("groups", "expected"), [(2, 1024 + 3456 + 1024 - 768), (1, 768)])
def test_a_small_3x3_convolution_of_one_sample_goes_to_onednn_only_when_grouped(one_thread, groups, expected):
    x, grad = torch.zeros(1, 12, 4, 4), torch.zeros(1, 8, 4, 4)  # x: 768 B, blocked 1,024; grad blocked 1,024
    w = torch.zeros(8, 6, 3, 3)  # blocked 16 x 6 x 3 x 3: 3,456 B
    assert input_grad_scratch(x, w, grad, 1, 1, groups) == expected
