//! What this binary is: version, commit, compiled features, the GDAL it runs
//! against and the CPU kernels it picked. `--version` and Help > About print it,
//! so that a bug report says exactly which build it came from.

use std::fmt;

/// The facts of this build and this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildInfo {
    pub version: &'static str,
    pub commit: &'static str,
    /// GPU backends compiled in (`cuda`, `metal`); empty for a CPU-only build.
    pub features: Vec<&'static str>,
    /// GDAL's own release name, asked at run time (the library actually loaded).
    pub gdal: String,
    /// PROJ's version as GDAL reports it.
    pub proj: String,
    /// The fast CPU paths available here.
    pub cpu: Vec<&'static str>,
}

impl BuildInfo {
    pub fn current() -> Self {
        let features = [("cuda", cfg!(feature = "cuda")), ("metal", cfg!(feature = "metal"))]
            .into_iter()
            .filter_map(|(name, on)| on.then_some(name))
            .collect();
        // BUILD_INFO is `KEY=value` lines; PROJ's version as run, else as built.
        let build = gdal::version::version_info("BUILD_INFO");
        let key = |k: &str| build.lines().find_map(|l| l.strip_prefix(k)?.strip_prefix('=').map(str::to_owned));
        let proj =
            key("PROJ_RUNTIME_VERSION").or_else(|| key("PROJ_BUILD_VERSION")).unwrap_or_else(|| "unknown".into());
        let mut cpu = Vec::new();
        if engine::models::quant::has_vnni() {
            cpu.push("AVX-512 VNNI (int8/int4)");
        }
        if engine::models::quant::bf16::has_bf16() {
            cpu.push("AVX-512 BF16");
        }
        if cpu.is_empty() && engine::models::quant::has_avx2() {
            cpu.push("AVX2");
        }
        Self {
            version: env!("CARGO_PKG_VERSION"),
            commit: env!("RR_GIT_COMMIT"),
            features,
            gdal: gdal::version::version_info("RELEASE_NAME"),
            proj,
            cpu,
        }
    }
}

impl fmt::Display for BuildInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[&str], none: &str| if v.is_empty() { none.to_owned() } else { v.join(", ") };
        writeln!(f, "{} (commit {})", self.version, self.commit)?;
        writeln!(f, "GPU features: {}", list(&self.features, "none (CPU only)"))?;
        writeln!(f, "GDAL {} (PROJ {})", self.gdal, self.proj)?;
        write!(f, "CPU kernels: {}", list(&self.cpu, "portable"))
    }
}
