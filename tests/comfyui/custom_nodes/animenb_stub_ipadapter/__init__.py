"""Test stand-in for the ComfyUI_IPAdapter_plus node pack (loaded only by animenb's test servers).

It registers the two node classes animenb's IP-Adapter graph uses, with the real pack's
input names and types, so the backend's "pack present" path (upload the reference, wire
IPAdapterModelLoader + CLIPVisionLoader + IPAdapterAdvanced into the sampler's model) runs
against a real ComfyUI. It does not implement IP-Adapter: IPAdapterAdvanced returns the
model unchanged. Real installs use the real pack.
"""
import os

import folder_paths

_EXTENSIONS = {".safetensors", ".bin"}
if "ipadapter" in folder_paths.folder_names_and_paths:
    folder_paths.folder_names_and_paths["ipadapter"][1].update(_EXTENSIONS)
else:
    folder_paths.folder_names_and_paths["ipadapter"] = (
        [os.path.join(folder_paths.models_dir, "ipadapter")], _EXTENSIONS)

WEIGHT_TYPES = ["linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output",
                "weak middle", "strong middle", "style transfer", "composition", "strong style transfer"]


class IPAdapterModelLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ipadapter_file": (folder_paths.get_filename_list("ipadapter"),)}}

    RETURN_TYPES = ("IPADAPTER",)
    FUNCTION = "load_ipadapter_model"
    CATEGORY = "ipadapter/loaders"

    def load_ipadapter_model(self, ipadapter_file):
        return ({"stub": folder_paths.get_full_path("ipadapter", ipadapter_file)},)


class IPAdapterAdvanced:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "ipadapter": ("IPADAPTER",),
                "image": ("IMAGE",),
                "weight": ("FLOAT", {"default": 1.0, "min": -1, "max": 5, "step": 0.05}),
                "weight_type": (WEIGHT_TYPES,),
                "combine_embeds": (["concat", "add", "subtract", "average", "norm average"],),
                "start_at": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
                "end_at": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}),
                "embeds_scaling": (["V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty"],),
            },
            "optional": {"image_negative": ("IMAGE",), "attn_mask": ("MASK",), "clip_vision": ("CLIP_VISION",)},
        }

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply_ipadapter"
    CATEGORY = "ipadapter"

    def apply_ipadapter(self, model, ipadapter, image, weight, weight_type, combine_embeds, start_at, end_at,
                        embeds_scaling, image_negative=None, attn_mask=None, clip_vision=None):
        if image.ndim != 4 or image.shape[-1] != 3:
            raise ValueError(f"reference image must be [B, H, W, 3], got {tuple(image.shape)}")
        if clip_vision is None:
            raise ValueError("Missing CLIPVision model.")
        return (model.clone(),)


NODE_CLASS_MAPPINGS = {"IPAdapterModelLoader": IPAdapterModelLoader, "IPAdapterAdvanced": IPAdapterAdvanced}
