//! Meta's checkpoint layout: `sam3.pt` as the `sam3` package saves and loads it
//! (image model under `detector.`, video tracker under `tracker.`), or the same
//! names in safetensors. Names are mapped to transformers' (fused q/k/v split,
//! the position table's CLS slot dropped) so one set of stages serves both; the
//! configuration comes from the tensors' shapes and the constants of Meta's
//! builder (`build_sam3_image_model` hard-codes its sizes; there is no config file).
//! What differs beyond names — how Meta's code computes with the same weights —
//! is [`Flavour::Meta`].

use std::collections::HashMap;

use candle_core::Tensor;

use super::config::{
    Config, DecoderConfig, Flavour, GeometryConfig, MaskConfig, RopeParameters, StageConfig, TextConfig, VisionConfig,
    VitConfig,
};

/// The ViT blocks in Meta's names; their presence tells the layout apart.
const TRUNK: &str = "backbone.vision_backbone.trunk.";

/// Whether `names` (after an optional `detector.`) are Meta's.
pub fn is_meta<'a>(mut names: impl Iterator<Item = &'a str>) -> bool {
    names.any(|n| n.strip_prefix("detector.").unwrap_or(n).starts_with(TRUNK))
}

/// Whether a tensor of the file is needed: the image model's, without the ones
/// recomputed or unused here (the tracker, RoPE tables, CLIP's own projection,
/// point-prompt weights).
pub fn wanted(name: &str) -> bool {
    let n = name.strip_prefix("detector.").unwrap_or(name);
    !(n.starts_with("tracker.")
        || n.ends_with("freqs_cis")
        || n == "backbone.language_backbone.encoder.text_projection"
        || n.starts_with("geometry_encoder.points_"))
        && rename(n).is_some()
}

/// `index.rest` of a numbered module list.
fn indexed(name: &str) -> Option<(&str, &str)> {
    let (i, rest) = name.split_once('.')?;
    i.bytes().all(|b| b.is_ascii_digit()).then_some((i, rest))
}

/// `nn.MultiheadAttention`'s parameters in transformers' names; `out` is the
/// output projection's (`o_proj`, or `out_proj` in the CLIP tower).
fn attention(rest: &str, out: &str) -> Option<String> {
    match rest {
        "in_proj_weight" => Some("{qkv}_proj.weight".into()),
        "in_proj_bias" => Some("{qkv}_proj.bias".into()),
        _ => rest.strip_prefix("out_proj.").map(|p| format!("{out}.{p}")),
    }
}

/// A pre-norm layer of the exemplar or fusion encoder.
fn encoder_layer(rest: &str) -> Option<String> {
    let (module, p) = rest.split_once('.')?;
    Some(match module {
        "self_attn" => format!("self_attn.{}", attention(p, "o_proj")?),
        "cross_attn_image" | "cross_attn" => format!("cross_attn.{}", attention(p, "o_proj")?),
        "linear1" => format!("mlp.fc1.{p}"),
        "linear2" => format!("mlp.fc2.{p}"),
        "norm1" | "norm2" | "norm3" => format!("layer_{module}.{p}"),
        _ => return None,
    })
}

/// A post-norm layer of the DETR decoder.
fn decoder_layer(rest: &str) -> Option<String> {
    let (module, p) = rest.split_once('.')?;
    let attn = |to: &str| attention(p, "o_proj").map(|a| format!("{to}.{a}"));
    match module {
        "self_attn" => attn("self_attn"),
        "ca_text" => attn("text_cross_attn"),
        "cross_attn" => attn("vision_cross_attn"),
        "norm1" => Some(format!("vision_cross_attn_layer_norm.{p}")),
        "catext_norm" => Some(format!("text_cross_attn_layer_norm.{p}")),
        "norm2" => Some(format!("self_attn_layer_norm.{p}")),
        "norm3" => Some(format!("mlp_layer_norm.{p}")),
        "linear1" => Some(format!("mlp.fc1.{p}")),
        "linear2" => Some(format!("mlp.fc2.{p}")),
        _ => None,
    }
}

/// An `MLP` of Meta's (`layers.0..`) as transformers names it (`layer1..`).
fn mlp(rest: &str) -> Option<String> {
    let (i, p) = indexed(rest.strip_prefix("layers.")?)?;
    Some(format!("layer{}.{p}", i.parse::<usize>().ok()? + 1))
}

fn trunk(r: &str) -> Option<String> {
    if let Some((i, rest)) = r.strip_prefix("blocks.").and_then(indexed) {
        let to = match rest.split_once('.')? {
            ("norm1", p) => format!("layer_norm1.{p}"),
            ("norm2", p) => format!("layer_norm2.{p}"),
            ("attn", "qkv.weight") => "attention.{qkv}_proj.weight".into(),
            ("attn", "qkv.bias") => "attention.{qkv}_proj.bias".into(),
            ("attn", p) => format!("attention.o_proj.{}", p.strip_prefix("proj.")?),
            ("mlp", p) => format!("mlp.{p}"),
            _ => return None,
        };
        return Some(format!("layers.{i}.{to}"));
    }
    Some(match r {
        "pos_embed" => "embeddings.position_embeddings".into(),
        "patch_embed.proj.weight" => "embeddings.patch_embeddings.projection.weight".into(),
        _ => format!("layer_norm.{}", r.strip_prefix("ln_pre.")?),
    })
}

fn neck(r: &str) -> Option<String> {
    let (i, rest) = indexed(r)?;
    let (module, p) = rest.split_once('.')?;
    let to = match module {
        "dconv_2x2_0" | "dconv_2x2" => "scale_layers.0",
        "dconv_2x2_1" => "scale_layers.2",
        "conv_1x1" => "proj1",
        "conv_3x3" => "proj2",
        _ => return None,
    };
    Some(format!("fpn_layers.{i}.{to}.{p}"))
}

fn text(r: &str) -> Option<String> {
    if let Some((i, rest)) = r.strip_prefix("transformer.resblocks.").and_then(indexed) {
        let to = match rest.split_once('.')? {
            ("attn", p) => format!("self_attn.{}", attention(p, "out_proj")?),
            ("ln_1", p) => format!("layer_norm1.{p}"),
            ("ln_2", p) => format!("layer_norm2.{p}"),
            ("mlp", p) => format!("mlp.{}", p.replace("c_fc.", "fc1.").replace("c_proj.", "fc2.")),
            _ => return None,
        };
        return Some(format!("encoder.layers.{i}.{to}"));
    }
    Some(match r {
        "positional_embedding" => "embeddings.position_embedding.weight".into(),
        _ => match r.split_once('.')? {
            ("token_embedding", p) => format!("embeddings.token_embedding.{p}"),
            ("ln_final", p) => format!("final_layer_norm.{p}"),
            _ => return None,
        },
    })
}

fn geometry(r: &str) -> Option<String> {
    if let Some((i, rest)) = r.strip_prefix("encode.").and_then(indexed) {
        return Some(format!("layers.{i}.{}", encoder_layer(rest)?));
    }
    let (module, p) = r.split_once('.')?;
    let to = match module {
        "label_embed"
        | "cls_embed"
        | "boxes_direct_project"
        | "boxes_pool_project"
        | "boxes_pos_enc_project"
        | "final_proj" => module,
        "img_pre_norm" => "vision_layer_norm",
        "norm" => "prompt_layer_norm",
        "encode_norm" => "output_layer_norm",
        _ => return None,
    };
    Some(format!("{to}.{p}"))
}

fn decoder(r: &str) -> Option<String> {
    if let Some((i, rest)) = r.strip_prefix("layers.").and_then(indexed) {
        return Some(format!("layers.{i}.{}", decoder_layer(rest)?));
    }
    let (module, p) = r.split_once('.')?;
    Some(match module {
        "query_embed" | "reference_points" | "presence_token" => r.to_owned(),
        "norm" => format!("output_layer_norm.{p}"),
        "presence_token_out_norm" => format!("presence_layer_norm.{p}"),
        "bbox_embed" => format!("box_head.{}", mlp(p)?),
        "presence_token_head" => format!("presence_head.{}", mlp(p)?),
        "ref_point_head" => format!("ref_point_head.{}", mlp(p)?),
        "boxRPB_embed_x" => format!("box_rpb_embed_x.{}", mlp(p)?),
        "boxRPB_embed_y" => format!("box_rpb_embed_y.{}", mlp(p)?),
        _ => return None,
    })
}

fn scoring(r: &str) -> Option<String> {
    let (module, p) = r.split_once('.')?;
    Some(match module {
        "prompt_mlp" => match p.strip_prefix("out_norm.") {
            Some(q) => format!("text_mlp_out_norm.{q}"),
            None => format!("text_mlp.{}", mlp(p)?),
        },
        "prompt_proj" => format!("text_proj.{p}"),
        "hs_proj" => format!("query_proj.{p}"),
        _ => return None,
    })
}

fn mask_head(r: &str) -> Option<String> {
    let (module, p) = r.split_once('.')?;
    Some(match module {
        "pixel_decoder" => format!("pixel_decoder.{p}"),
        "mask_predictor" => format!("mask_embedder.{}", p.strip_prefix("mask_embed.")?),
        "instance_seg_head" => format!("instance_projection.{p}"),
        "semantic_seg_head" => format!("semantic_projection.{p}"),
        "cross_attend_prompt" => format!("prompt_cross_attn.{}", attention(p, "o_proj")?),
        "cross_attn_norm" => format!("prompt_cross_attn_norm.{p}"),
        _ => return None,
    })
}

/// Maps the rest of a name within one section of the model.
type Section = fn(&str) -> Option<String>;

/// transformers' name for a Meta name (without `detector.`); `{qkv}` marks a
/// fused projection to split. `None`: not a tensor the image model reads.
pub fn rename(name: &str) -> Option<String> {
    let sections: [(&str, Section, &str); 9] = [
        (TRUNK, trunk, "vision_encoder.backbone."),
        ("backbone.vision_backbone.convs.", neck, "vision_encoder.neck."),
        ("backbone.language_backbone.encoder.", text, "text_encoder.text_model."),
        ("backbone.language_backbone.resizer.", |p| Some(p.to_owned()), "text_projection."),
        ("geometry_encoder.", geometry, "geometry_encoder."),
        (
            "transformer.encoder.layers.",
            |r| indexed(r).and_then(|(i, rest)| Some(format!("{i}.{}", encoder_layer(rest)?))),
            "detr_encoder.layers.",
        ),
        ("transformer.decoder.", decoder, "detr_decoder."),
        ("dot_prod_scoring.", scoring, "dot_product_scoring."),
        ("segmentation_head.", mask_head, "mask_decoder."),
    ];
    sections.iter().find_map(|(from, map, to)| name.strip_prefix(from).and_then(map).map(|rest| format!("{to}{rest}")))
}

/// Meta's tensors under transformers' names: fused q/k/v split in three along
/// the output dimension, the ViT position table without its CLS slot.
pub fn to_transformers(tensors: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>, String> {
    let mut out = HashMap::with_capacity(tensors.len() + tensors.len() / 4);
    for (name, t) in tensors {
        let bare = name.strip_prefix("detector.").unwrap_or(&name);
        if !wanted(bare) {
            continue;
        }
        let Some(to) = rename(bare) else { continue };
        let fail = |e: candle_core::Error| format!("{name}: {e}");
        if to.contains("{qkv}") {
            let n = t.dim(0).map_err(fail)?;
            if n % 3 != 0 {
                return Err(format!("{name}: {n} rows do not split into q, k and v"));
            }
            for (i, part) in ["q", "k", "v"].iter().enumerate() {
                out.insert(to.replace("{qkv}", part), t.narrow(0, i * n / 3, n / 3).map_err(fail)?);
            }
        } else if bare == format!("{TRUNK}pos_embed") {
            let rows = t.dim(1).map_err(fail)?;
            let side = (rows as f64).sqrt() as usize;
            let t = if side * side == rows || rows < 2 { t } else { t.narrow(1, 1, rows - 1).map_err(fail)? };
            out.insert(to, t);
        } else {
            out.insert(to, t);
        }
    }
    Ok(out)
}

/// The configuration of transformers-named `tensors` mapped from Meta's: sizes
/// from the shapes, head counts and the rest from Meta's builder (64-wide heads
/// in the ViT and text tower, 32-wide elsewhere, 1008² input, 24-patch windows).
pub fn config(t: &HashMap<String, Tensor>) -> Result<Config, String> {
    // Shapes come from the file: checked before they are indexed or divided by.
    let dims = |name: &str, rank: usize| -> Result<Vec<usize>, String> {
        let d = t.get(name).map(|x| x.dims().to_vec()).ok_or_else(|| format!("no tensor for {name}"))?;
        if d.len() != rank || d.contains(&0) {
            return Err(format!("{name} has shape {d:?}, expected {rank} non-zero sides"));
        }
        Ok(d)
    };
    let count = |prefix: &str| (0..).take_while(|i| t.keys().any(|k| k.starts_with(&format!("{prefix}{i}.")))).count();
    let vit = "vision_encoder.backbone.";
    let patch = dims(&format!("{vit}embeddings.patch_embeddings.projection.weight"), 4)?;
    let (hidden, patch_size) = (patch[0], patch[2]);
    let grid = ((dims(&format!("{vit}embeddings.position_embeddings"), 3)?[1] as f64).sqrt()) as usize;
    let depth = count(&format!("{vit}layers."));
    let backbone_config = VitConfig {
        hidden_size: hidden,
        intermediate_size: dims(&format!("{vit}layers.0.mlp.fc1.weight"), 2)?[0],
        num_hidden_layers: depth,
        num_attention_heads: (hidden / 64).max(1),
        patch_size,
        image_size: 1008,
        pretrain_image_size: grid * patch_size,
        window_size: 24,
        // Meta's builder: every eighth block global, the last always.
        global_attn_indexes: (0..depth).filter(|i| (i + 1) % 8 == 0 || i + 1 == depth).collect(),
        layer_norm_eps: 1e-5,
        hidden_act: "gelu".into(),
        rope_parameters: RopeParameters::default(),
    };
    let d = dims("detr_encoder.layers.0.mlp.fc1.weight", 2)?;
    let stage = |prefix: &str| -> Result<StageConfig, String> {
        let fc1 = dims(&format!("{prefix}layers.0.mlp.fc1.weight"), 2)?;
        Ok(StageConfig {
            hidden_size: fc1[1],
            num_layers: count(&format!("{prefix}layers.")),
            num_attention_heads: (fc1[1] / 32).max(1),
            intermediate_size: fc1[0],
            hidden_act: "relu".into(),
        })
    };
    let text_width = dims("text_encoder.text_model.embeddings.token_embedding.weight", 2)?;
    let geometry = stage("geometry_encoder.")?;
    Ok(Config {
        vision_config: VisionConfig {
            backbone_config,
            fpn_hidden_size: dims("vision_encoder.neck.fpn_layers.0.proj2.weight", 4)?[0],
            scale_factors: [4.0, 2.0, 1.0, 0.5][..count("vision_encoder.neck.fpn_layers.").min(4)].to_vec(),
        },
        text_config: TextConfig {
            vocab_size: text_width[0],
            hidden_size: text_width[1],
            intermediate_size: dims("text_encoder.text_model.encoder.layers.0.mlp.fc1.weight", 2)?[0],
            num_hidden_layers: count("text_encoder.text_model.encoder.layers."),
            num_attention_heads: (text_width[1] / 64).max(1),
            max_position_embeddings: dims("text_encoder.text_model.embeddings.position_embedding.weight", 2)?[0],
            layer_norm_eps: 1e-5,
            hidden_act: "gelu".into(),
        },
        detr_encoder_config: stage("detr_encoder.")?,
        detr_decoder_config: DecoderConfig {
            stage: stage("detr_decoder.")?,
            num_queries: dims("detr_decoder.query_embed.weight", 2)?[0],
        },
        mask_decoder_config: MaskConfig {
            hidden_size: d[1],
            num_upsampling_stages: count("mask_decoder.pixel_decoder.conv_layers."),
            num_attention_heads: (d[1] / 32).max(1),
        },
        geometry_encoder_config: GeometryConfig {
            hidden_size: geometry.hidden_size,
            num_layers: geometry.num_layers,
            num_attention_heads: geometry.num_attention_heads,
            intermediate_size: geometry.intermediate_size,
            roi_size: dims("geometry_encoder.boxes_pool_project.weight", 4)?[2],
        },
        flavour: Flavour::Meta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_follows_the_shapes() {
        let z = |shape: &[usize]| Tensor::zeros(shape, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let mut t = HashMap::new();
        let vit = "vision_encoder.backbone.";
        t.insert(format!("{vit}embeddings.patch_embeddings.projection.weight"), z(&[128, 3, 14, 14]));
        t.insert(format!("{vit}embeddings.position_embeddings"), z(&[1, 36, 128]));
        for i in 0..10 {
            t.insert(format!("{vit}layers.{i}.mlp.fc1.weight"), z(&[200, 128]));
        }
        for (stage, n) in [("detr_encoder", 6), ("detr_decoder", 4), ("geometry_encoder", 3)] {
            for i in 0..n {
                t.insert(format!("{stage}.layers.{i}.mlp.fc1.weight"), z(&[512, 64]));
            }
        }
        t.insert("detr_decoder.query_embed.weight".into(), z(&[50, 64]));
        t.insert("geometry_encoder.boxes_pool_project.weight".into(), z(&[64, 64, 5, 5]));
        t.insert("text_encoder.text_model.embeddings.token_embedding.weight".into(), z(&[300, 128]));
        t.insert("text_encoder.text_model.embeddings.position_embedding.weight".into(), z(&[16, 128]));
        t.insert("text_encoder.text_model.encoder.layers.0.mlp.fc1.weight".into(), z(&[256, 128]));
        for i in 0..3 {
            t.insert(format!("vision_encoder.neck.fpn_layers.{i}.proj2.weight"), z(&[64, 64, 3, 3]));
            t.insert(format!("mask_decoder.pixel_decoder.conv_layers.{i}.weight"), z(&[64, 64, 3, 3]));
        }
        let c = config(&t).unwrap();
        let v = &c.vision_config.backbone_config;
        assert_eq!((v.hidden_size, v.num_attention_heads, v.intermediate_size, v.num_hidden_layers), (128, 2, 200, 10));
        assert_eq!((v.pretrain_image_size, v.global_attn_indexes.clone(), v.layer_norm_eps), (84, vec![7, 9], 1e-5));
        assert_eq!(c.vision_config.scale_factors, [4.0, 2.0, 1.0]);
        assert_eq!((c.detr_encoder_config.num_layers, c.detr_encoder_config.num_attention_heads), (6, 2));
        assert_eq!((c.detr_decoder_config.stage.num_layers, c.detr_decoder_config.num_queries), (4, 50));
        assert_eq!((c.geometry_encoder_config.num_layers, c.geometry_encoder_config.roi_size), (3, 5));
        assert_eq!(
            (c.text_config.vocab_size, c.text_config.num_hidden_layers, c.text_config.max_position_embeddings),
            (300, 1, 16)
        );
        assert_eq!((c.mask_decoder_config.num_upsampling_stages, c.flavour), (3, Flavour::Meta));
        t.remove("detr_decoder.query_embed.weight");
        assert!(config(&t).unwrap_err().contains("detr_decoder.query_embed.weight"));
        // A hostile file's odd shapes are errors, not panics.
        t.insert("detr_decoder.query_embed.weight".into(), z(&[50, 64]));
        t.insert(format!("{vit}embeddings.patch_embeddings.projection.weight"), z(&[128]));
        assert!(config(&t).unwrap_err().contains("expected 4 non-zero sides"));
        t.insert(format!("{vit}embeddings.patch_embeddings.projection.weight"), z(&[0, 3, 14, 14]));
        assert!(config(&t).is_err());
    }

    #[test]
    fn names_map_as_transformers_conversion_does() {
        let cases = [
            (
                "backbone.vision_backbone.trunk.blocks.3.attn.qkv.weight",
                "vision_encoder.backbone.layers.3.attention.{qkv}_proj.weight",
            ),
            (
                "backbone.vision_backbone.trunk.blocks.3.attn.proj.bias",
                "vision_encoder.backbone.layers.3.attention.o_proj.bias",
            ),
            (
                "backbone.vision_backbone.convs.0.dconv_2x2_1.weight",
                "vision_encoder.neck.fpn_layers.0.scale_layers.2.weight",
            ),
            (
                "backbone.language_backbone.encoder.transformer.resblocks.5.attn.out_proj.weight",
                "text_encoder.text_model.encoder.layers.5.self_attn.out_proj.weight",
            ),
            (
                "backbone.language_backbone.encoder.transformer.resblocks.5.mlp.c_proj.bias",
                "text_encoder.text_model.encoder.layers.5.mlp.fc2.bias",
            ),
            ("backbone.language_backbone.resizer.weight", "text_projection.weight"),
            (
                "geometry_encoder.encode.2.cross_attn_image.in_proj_bias",
                "geometry_encoder.layers.2.cross_attn.{qkv}_proj.bias",
            ),
            ("geometry_encoder.img_pre_norm.weight", "geometry_encoder.vision_layer_norm.weight"),
            ("transformer.encoder.layers.4.norm2.bias", "detr_encoder.layers.4.layer_norm2.bias"),
            (
                "transformer.decoder.layers.1.catext_norm.weight",
                "detr_decoder.layers.1.text_cross_attn_layer_norm.weight",
            ),
            ("transformer.decoder.boxRPB_embed_y.layers.1.weight", "detr_decoder.box_rpb_embed_y.layer2.weight"),
            ("dot_prod_scoring.prompt_mlp.out_norm.bias", "dot_product_scoring.text_mlp_out_norm.bias"),
            (
                "segmentation_head.mask_predictor.mask_embed.layers.2.weight",
                "mask_decoder.mask_embedder.layers.2.weight",
            ),
            ("segmentation_head.cross_attend_prompt.out_proj.bias", "mask_decoder.prompt_cross_attn.o_proj.bias"),
        ];
        for (meta, hf) in cases {
            assert_eq!(rename(meta).as_deref(), Some(hf), "{meta}");
        }
        assert!(!wanted("detector.backbone.vision_backbone.trunk.blocks.0.attn.freqs_cis"));
        assert!(!wanted("tracker.maskmem_backbone.mask_downsampler.encoder.0.weight"));
        assert!(!wanted("detector.geometry_encoder.points_direct_project.weight"));
        assert!(wanted("detector.transformer.decoder.query_embed.weight"));
        assert!(is_meta(["detector.backbone.vision_backbone.trunk.ln_pre.weight"].into_iter()));
        assert!(!is_meta(["detector_model.vision_encoder.backbone.layer_norm.weight"].into_iter()));
    }
}
