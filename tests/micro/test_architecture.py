"""The embedded model's components: they build, their shapes line up, they fit the budgets."""

import torch

from studio.micro import architecture as arch

TOKENIZER_MB = 2.3  # vocab.json + merges.txt + tokenizer.json of the CLIP tokenizer, at most


def test_vae_maps_128px_images_to_16x16x4_latents_and_back():
    vae = arch.build_vae().eval()
    with torch.no_grad():
        latents = vae.encode(torch.rand(1, 3, 128, 128) * 2 - 1).latent_dist.mean
        image = vae.decode(latents).sample
    assert latents.shape == (1, 4, 16, 16)
    assert image.shape == (1, 3, 128, 128)


def test_unet_denoises_latents_conditioned_on_the_text_encoder_states():
    text_encoder, unet = arch.build_text_encoder().eval(), arch.build_unet().eval()
    ids = torch.full((2, arch.CLIP_MAX_LENGTH), arch.CLIP_EOS_ID)
    ids[:, 0] = arch.CLIP_BOS_ID
    with torch.no_grad():
        states = text_encoder(ids).last_hidden_state
        eps = unet(torch.randn(2, 4, 16, 16), torch.tensor([10, 900]), states).sample
    assert states.shape == (2, 77, unet.config.cross_attention_dim)
    assert eps.shape == (2, 4, 16, 16)
    assert text_encoder.config.vocab_size == 49408
    assert (text_encoder.config.bos_token_id, text_encoder.config.eos_token_id, text_encoder.config.pad_token_id) == (
        49406,
        49407,
        49407,
    )


def test_controlnet_residuals_fit_the_unet_for_a_128px_hint():
    unet = arch.build_unet().eval()
    controlnet = arch.build_controlnet(unet).eval()
    states = torch.randn(1, 77, unet.config.cross_attention_dim)
    latents = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        down, mid = controlnet(
            latents, 500, encoder_hidden_states=states, controlnet_cond=torch.rand(1, 3, 128, 128), return_dict=False
        )
        plain = unet(latents, 500, states).sample
        guided = unet(
            latents, 500, states, down_block_additional_residuals=down, mid_block_additional_residual=mid
        ).sample
    # A fresh ControlNet's zero convolutions leave the UNet's prediction unchanged.
    torch.testing.assert_close(guided, plain)


def test_builders_are_seeded():
    a, b = arch.build_unet(), arch.build_unet()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_sizes_fit_the_budgets():
    report = arch.size_report()
    assert report["model_fp16_mb_without_tokenizer"] + TOKENIZER_MB < arch.MODEL_BUDGET_MB
    assert report["controlnet"]["fp16_mb"] < arch.CONTROLNET_BUDGET_MB
    # The text encoder is mostly its token table: hidden size is the lever on its size.
    assert report["text_encoder"]["parameters"] > 49408 * 128


def test_noise_schedule_is_sd15s():
    from diffusers import DDPMScheduler, PNDMScheduler

    config = arch.noise_scheduler_config()
    pndm = PNDMScheduler.from_config(config)
    assert pndm.config.skip_prk_steps and pndm.config.steps_offset == 1
    ddpm = DDPMScheduler.from_config(config)
    # SD1.5's schedule leaves ~0.0047 of the signal's variance at the last step.
    assert abs(float(ddpm.alphas_cumprod[-1]) - 0.0047) < 2e-4
    assert ddpm.config.prediction_type == "epsilon"


def test_tiny_architecture_keeps_the_interfaces():
    tiny = arch.Architecture.tiny()
    vae, text_encoder, unet = arch.build_vae(tiny), arch.build_text_encoder(tiny), arch.build_unet(tiny)
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, 128, 128)).latent_dist.mean
        states = text_encoder(torch.tensor([[49406, 49407]])).last_hidden_state
        eps = unet(latents, 1, states).sample
    assert latents.shape == eps.shape == (1, 4, 16, 16)
    assert arch.parameter_count(unet) < arch.parameter_count(arch.build_unet()) / 10
