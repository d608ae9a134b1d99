//! The one place the command line picks the engine backend. Every library crate above
//! `mixrank-nn` is generic over it (`mixrank_engine::Backend`); a command runs on the
//! device `--device` names: the CPU backend (`CpuOps`: the `gemm` crate's kernels, rayon
//! threads sized by `--threads` / `[train] threads`) or the CUDA backend (`CudaOps`,
//! crates/mixrank-cuda: the NVIDIA libraries loaded at run time, so this binary runs
//! without them and `--device cuda` says what is missing).

use mixrank_cuda::CudaOps;
use mixrank_data::config::model::{TrainPrecision, TrainSection};
use mixrank_engine::{CpuOps, GemmOperands};
use std::fmt;
use std::str::FromStr;

/// The backend of the CPU commands that take no `--device` (and of `--device cpu`).
pub type Ops = CpuOps;

pub fn ops() -> Ops {
    CpuOps::new()
}

/// Where a command runs: `--device cpu` (the default) or `--device cuda[:N]` (GPU `N`,
/// default 0). Checkpoints are the same files on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => Err(format!("`{s}` is not a device: cpu, cuda or cuda:N (N a GPU number)")),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The GEMM operands `[train] precision` asks for.
pub fn operands(t: &TrainSection) -> GemmOperands {
    match t.precision {
        TrainPrecision::F32 => GemmOperands::F32,
        TrainPrecision::Bf16 => GemmOperands::Bf16,
    }
}

/// The CPU backend that trains `t` (its `precision`).
pub fn train_ops(t: &TrainSection) -> Ops {
    ops().with_gemm_operands(operands(t))
}

/// GPU `n`'s backend that trains `t` (its `precision`).
pub fn train_cuda(n: usize, t: &TrainSection) -> anyhow::Result<CudaOps> {
    Ok(cuda(n)?.with_gemm_operands(operands(t)))
}

/// Opens GPU `n`, or says why not (no driver, no such GPU, no libnvrtc).
pub fn cuda(n: usize) -> anyhow::Result<CudaOps> {
    CudaOps::new(n).map_err(|e| anyhow::anyhow!("--device cuda:{n}: {e}"))
}

/// The serving engine on the CPU (sessions are reopened through it on reload).
pub fn engine() -> mixrank_serve::Engine {
    mixrank_serve::Engine::new(ops())
}

/// The serving engine on `device`.
pub fn engine_on(device: Device) -> anyhow::Result<mixrank_serve::Engine> {
    Ok(match device {
        Device::Cpu => engine(),
        Device::Cuda(n) => mixrank_serve::Engine::new(cuda(n)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print_back() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(Device::Cuda(3)));
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU"] {
            let e = bad.parse::<Device>().unwrap_err();
            assert!(e.contains(bad) && e.contains("cuda:N"), "{e}");
        }
    }
}
