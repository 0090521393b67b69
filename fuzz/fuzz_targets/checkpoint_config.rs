//! A checkpoint's `config.json` and a safetensors file, as the loaders read
//! them: the first byte picks which, the rest is the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 3 {
        0 => {
            let text = String::from_utf8_lossy(rest);
            // What the loader does with a config before any tensor: its memory check.
            if let Ok(config) = engine::models::qwen2_5_vl::Config::from_json(&text) {
                let _ = config.parameter_count();
                let _ = config.text_projection_count();
            }
        }
        1 => {
            let _ = serde_json::from_slice::<engine::reasoner::processor::PreprocessorConfig>(rest);
            let _ = serde_json::from_slice::<engine::reasoner::generate::GenerationConfig>(rest);
        }
        _ => {
            let dir = std::env::temp_dir().join(format!("rr-fuzz-st-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join("model.safetensors");
            std::fs::write(&path, rest).expect("temp file");
            let _ = engine::models::read_checkpoint(&path, &candle_core::Device::Cpu);
            let _ = engine::models::tensor_names(&[path]);
        }
    }
});
