"""ConditionalUNet's input handling: sizes that are multiples of the UNet factor go in unpadded, other sizes are
zero-padded up and cropped back, and the padding is exactly zeros (same output as padding by hand)."""

import torch
from torch.nn import functional as F

from CMRSynthLib.models.unet import UNET_PRESETS, ConditionalUNet


def network(spatial_dims=2):
    torch.manual_seed(0)
    net = ConditionalUNet(spatial_dims=spatial_dims, channels=1, mask_channels=4, token_counts=(3, 3, 3),
                          config=UNET_PRESETS["tiny"]).eval()
    torch.nn.init.normal_(net.unet.out[-1].conv.weight, std=0.1)  # MONAI zero-initialises the output layer
    return net


def test_multiple_sizes_go_in_unpadded_and_others_are_padded_then_cropped():
    net, seen = network(), []
    net.unet.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    tokens = torch.ones(2, 3, dtype=torch.long)
    with torch.no_grad():
        whole = net(torch.randn(2, 1, 8, 8), torch.tensor([5.0, 9.0]), torch.rand(2, 4, 8, 8), tokens)
        odd = net(torch.randn(2, 1, 7, 6), torch.tensor([5.0, 9.0]), torch.rand(2, 4, 7, 6), tokens)
    assert seen == [(2, 5, 8, 8), (2, 5, 8, 6)]
    assert whole.shape == (2, 1, 8, 8) and odd.shape == (2, 1, 7, 6)


def test_padded_output_equals_running_the_zero_padded_input():
    net = network()
    x, mask, t = torch.randn(1, 1, 7, 5), torch.rand(1, 4, 7, 5), torch.tensor([3.0])
    tokens = torch.ones(1, 3, dtype=torch.long)
    with torch.no_grad():
        cropped = net(x, t, mask, tokens)
        by_hand = net.unet(F.pad(torch.cat([x, mask], 1), [0, 1, 0, 1]), t, class_labels=tokens)[:, :, :7, :5]
    assert torch.equal(cropped, by_hand) and cropped.abs().max() > 0
