"""Pixel normalisation constants the families' processors use (mean and std per RGB channel)."""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP: Qwen2/2.5-VL, LLaVA, the InternVL video processor
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # InternVL-hf checkpoints' image processor (conversion script)
IMAGENET_STD = (0.229, 0.224, 0.225)
