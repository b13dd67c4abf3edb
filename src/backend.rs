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
    }
    names
}

/// A device by name: `flex`, `ndarray`, `cuda` / `cuda:N`, `vulkan` / `vulkan:N` (the N-th
/// discrete GPU), each available when the crate was built with the feature of that name.
///
/// # Errors
/// [`Error::InvalidArgument`] for an unknown name, a bad index, or a backend this build lacks.
pub fn device_from_name(name: &str) -> Result<Device> {
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
        "cuda" => Ok(Device::cuda(index.unwrap_or(0))),
        #[cfg(feature = "vulkan")]
        "vulkan" => Ok(Device::vulkan(burn::tensor::DeviceKind::DiscreteGpu(
            index.unwrap_or(0),
        ))),
        known if ["flex", "ndarray", "cuda", "vulkan"].contains(&known) => Err(missing()),
        _ => Err(Error::invalid(
            "device",
            format!(
                "unknown device `{name}` (available: {})",
                available_devices().join(", ")
            ),
        )),
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
    }
}
