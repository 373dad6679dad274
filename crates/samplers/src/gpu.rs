//! NVIDIA GPUs through NVML.

use nvml_wrapper::enum_wrappers::device::{Clock, PcieUtilCounter, TemperatureSensor};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use serde::Serialize;

use crate::{num, Row, Sampler, SamplerError};

/// One GPU as NVML names it, for `env.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuInfo {
    pub index: u32,
    pub name: String,
    pub uuid: String,
    pub memory_total_bytes: u64,
}

/// Samples every GPU NVML sees.
///
/// Writes `gpu.csv`, one row per GPU per sample:
///
/// | column | unit |
/// |---|---|
/// | `gpu` | NVML index |
/// | `pcie_tx_kb_s` | KB/s sent by the GPU over PCIe (NVML's 20 ms window) |
/// | `pcie_rx_kb_s` | KB/s received by the GPU over PCIe |
/// | `gpu_util_pct` | % of the last period a kernel ran |
/// | `mem_util_pct` | % of the last period device memory was read or written |
/// | `mem_used_bytes` | bytes of device memory in use |
/// | `power_w` | watts |
/// | `sm_clock_mhz` | MHz |
/// | `temp_c` | °C |
///
/// A field the GPU does not support is an empty cell; any other NVML error stops the sampler.
/// Reading PCIe throughput takes NVML about 20 ms per counter, so with many GPUs a sample can
/// outlast a 100 ms interval; the set then skips ticks and counts them.
pub struct NvmlSampler {
    nvml: Nvml,
    count: u32,
}

impl NvmlSampler {
    /// Loads NVML and counts the GPUs.
    ///
    /// Errors: [`SamplerError::Unavailable`] when the NVML library cannot be loaded or
    /// initialized (no NVIDIA driver) or it sees no GPU.
    pub fn new() -> Result<NvmlSampler, SamplerError> {
        let unavailable = |reason: String| SamplerError::Unavailable { sampler: "gpu".to_owned(), reason };
        let nvml = Nvml::init().map_err(|e| unavailable(format!("NVML init failed: {e}")))?;
        let count = nvml.device_count().map_err(|e| unavailable(format!("NVML device count: {e}")))?;
        if count == 0 {
            return Err(unavailable("NVML sees no GPU".to_owned()));
        }
        Ok(NvmlSampler { nvml, count })
    }

    /// Names, UUIDs and memory sizes of the GPUs, in index order.
    pub fn devices(&self) -> Result<Vec<GpuInfo>, SamplerError> {
        (0..self.count)
            .map(|index| {
                let device = self.nvml.device_by_index(index).map_err(|e| nvml(index, "device", e))?;
                Ok(GpuInfo {
                    index,
                    name: device.name().map_err(|e| nvml(index, "name", e))?,
                    uuid: device.uuid().map_err(|e| nvml(index, "uuid", e))?,
                    memory_total_bytes: device.memory_info().map_err(|e| nvml(index, "memory", e))?.total,
                })
            })
            .collect()
    }

    /// The driver version NVML reports.
    pub fn driver_version(&self) -> Result<String, SamplerError> {
        self.nvml
            .sys_driver_version()
            .map_err(|source| SamplerError::Nvml { what: "driver version".to_owned(), source })
    }
}

fn nvml(index: u32, what: &str, source: NvmlError) -> SamplerError {
    SamplerError::Nvml { what: format!("GPU {index} {what}"), source }
}

/// `Ok(None)` for a field this GPU does not support.
fn optional<T>(index: u32, what: &str, r: Result<T, NvmlError>) -> Result<Option<T>, SamplerError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(NvmlError::NotSupported) => Ok(None),
        Err(e) => Err(nvml(index, what, e)),
    }
}

fn cell(v: Option<f64>) -> String {
    v.map_or(String::new(), num)
}

impl Sampler for NvmlSampler {
    fn name(&self) -> &str {
        "gpu"
    }

    fn columns(&self) -> Vec<String> {
        [
            "gpu",
            "pcie_tx_kb_s",
            "pcie_rx_kb_s",
            "gpu_util_pct",
            "mem_util_pct",
            "mem_used_bytes",
            "power_w",
            "sm_clock_mhz",
            "temp_c",
        ]
        .map(String::from)
        .to_vec()
    }

    fn sample(&mut self, _t: f64) -> Result<Vec<Row>, SamplerError> {
        (0..self.count)
            .map(|i| {
                let d = self.nvml.device_by_index(i).map_err(|e| nvml(i, "device", e))?;
                let tx = optional(i, "PCIe TX", d.pcie_throughput(PcieUtilCounter::Send))?;
                let rx = optional(i, "PCIe RX", d.pcie_throughput(PcieUtilCounter::Receive))?;
                let util = optional(i, "utilization", d.utilization_rates())?;
                let mem = optional(i, "memory", d.memory_info())?;
                let power_mw = optional(i, "power", d.power_usage())?;
                let sm = optional(i, "SM clock", d.clock_info(Clock::SM))?;
                let temp = optional(i, "temperature", d.temperature(TemperatureSensor::Gpu))?;
                Ok(vec![
                    i.to_string(),
                    cell(tx.map(f64::from)),
                    cell(rx.map(f64::from)),
                    cell(util.as_ref().map(|u| f64::from(u.gpu))),
                    cell(util.as_ref().map(|u| f64::from(u.memory))),
                    cell(mem.map(|m| m.used as f64)),
                    cell(power_mw.map(|mw| f64::from(mw) / 1000.0)),
                    cell(sm.map(f64::from)),
                    cell(temp.map(f64::from)),
                ])
            })
            .collect()
    }
}
