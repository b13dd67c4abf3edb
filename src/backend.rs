//! Choosing a device by name, for command lines and configuration files.

use burn::tensor::Device;

use crate::error::{Error, Result};

/// The device names [`device_from_name`] accepts with the features this build has.
pub fn available_devices() -> Vec<&'static str> {
    let mut names = Vec::new();
    if cfg!(feature = "flex") {
        names.push("flex");
    }
    if cfg!(feature = "ndarray") {
        names.push("ndarray");
    }
    if cfg!(feature = "cuda") {
        names.push("cuda[:N]");
    }
    if cfg!(feature = "vulkan") {
        names.push("vulkan[:N]");
        names.push("vulkan:cpu");
    }
    if cfg!(feature = "wgpu") {
        names.push("wgpu[:N]");
        names.push("wgpu:cpu");
    }
    names
}

/// A device by name: `flex`, `ndarray`, `cuda` / `cuda:N`, `vulkan` / `vulkan:N` (the N-th
/// discrete GPU), `vulkan:cpu` (a CPU Vulkan adapter, such as Mesa's lavapipe: the GPU code
/// path without a GPU), `wgpu` / `wgpu:N` / `wgpu:cpu` (the same through wgpu's WGSL path),
/// each available when the crate was built with the feature of that name.
/// GPU names are checked against the devices the backend finds on this machine.
///
/// # Errors
/// [`Error::InvalidArgument`] for an unknown name, a bad index, a backend this build lacks, or
/// a GPU that is not present.
pub fn device_from_name(name: &str) -> Result<Device> {
    #[cfg(feature = "vulkan")]
    if name == "vulkan:cpu" {
        return present(
            name,
            Device::vulkan(burn::tensor::DeviceKind::Cpu),
            burn::tensor::DeviceType::Vulkan,
        );
    }
    #[cfg(feature = "wgpu")]
    if name == "wgpu:cpu" {
        return present(
            name,
            Device::wgpu(burn::tensor::DeviceKind::Cpu),
            burn::tensor::DeviceType::Wgpu,
        );
    }
    let (kind, index) = match name.split_once(':') {
        Some((k, i)) => {
            let i = i
                .parse::<usize>()
                .map_err(|_| Error::invalid("device", format!("`{i}` is not a device index")))?;
            (k, Some(i))
        }
        None => (name, None),
    };
    let missing = || {
        Error::invalid(
            "device",
            format!(
                "`{name}` is not available in this build (available: {})",
                available_devices().join(", ")
            ),
        )
    };
    match kind {
        #[cfg(feature = "flex")]
        "flex" if index.is_none() => Ok(Device::flex()),
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)]
        "ndarray" if index.is_none() => Ok(Device::ndarray()),
        #[cfg(feature = "cuda")]
        "cuda" => present(
            name,
            Device::cuda(index.unwrap_or(0)),
            burn::tensor::DeviceType::Cuda,
        ),
        #[cfg(feature = "vulkan")]
        "vulkan" => present(
            name,
            Device::vulkan(burn::tensor::DeviceKind::DiscreteGpu(index.unwrap_or(0))),
            burn::tensor::DeviceType::Vulkan,
        ),
        #[cfg(feature = "wgpu")]
        "wgpu" => present(
            name,
            Device::wgpu(burn::tensor::DeviceKind::DiscreteGpu(index.unwrap_or(0))),
            burn::tensor::DeviceType::Wgpu,
        ),
        known if ["flex", "ndarray", "cuda", "vulkan", "wgpu"].contains(&known) => Err(missing()),
        _ => Err(Error::invalid(
            "device",
            format!(
                "unknown device `{name}` (available: {})",
                available_devices().join(", ")
            ),
        )),
    }
}

/// A CPU device for the small bookkeeping tensors that need no accelerator (the FLOPs
/// estimator's zero probes): flex where the build has it, else ndarray, else burn's default.
/// Not `Device::default()` alone: with a GPU feature compiled in that is the GPU, which may
/// be absent, and it panics on a bad `BURN_DEVICE`.
pub(crate) fn host_device() -> Device {
    #[cfg(feature = "flex")]
    return Device::flex();
    #[cfg(all(not(feature = "flex"), feature = "ndarray"))]
    #[allow(deprecated)]
    return Device::ndarray();
    #[cfg(not(any(feature = "flex", feature = "ndarray")))]
    return Device::default();
}

/// `device` if the backend of `kind` finds it on this machine.
#[cfg(any(feature = "cuda", feature = "vulkan", feature = "wgpu"))]
fn present(name: &str, device: Device, kind: burn::tensor::DeviceType) -> Result<Device> {
    let found = Device::enumerate(kind);
    if found.contains(&device) {
        Ok(device)
    } else {
        Err(Error::invalid(
            "device",
            format!(
                "`{name}` is not present on this machine ({} such device(s) found)",
                found.len()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_parsed() {
        assert!(device_from_name("flex").is_ok());
        assert!(matches!(
            device_from_name("tpu"),
            Err(Error::InvalidArgument { name: "device", .. })
        ));
        assert!(matches!(
            device_from_name("cuda:x"),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(available_devices().contains(&"flex"));
        // No machine has a 10th CUDA GPU or Vulkan discrete GPU; without the feature the
        // name is refused as unavailable, with it as not present.
        for name in ["cuda:9", "vulkan:9"] {
            assert!(
                matches!(
                    device_from_name(name),
                    Err(Error::InvalidArgument { name: "device", .. })
                ),
                "{name}"
            );
        }
    }
}
