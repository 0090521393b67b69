//! A `torch.save` archive (zip + pickle) read without running pickle code:
//! any bytes give tensors or a named error, never a panic or an abort.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("rr-fuzz-pt-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("model.pt");
    std::fs::write(&path, data).expect("temp file");
    let _ = engine::models::pth::read(&path, Some("model"), &candle_core::Device::Cpu);
});
