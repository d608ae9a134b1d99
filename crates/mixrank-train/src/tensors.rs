//! Named little-endian tensors in safetensors files: building them from host slices
//! and reading them back with a dtype and shape check.

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

/// One tensor to write.
pub struct Tensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl Tensor {
    pub fn f32(name: String, shape: Vec<usize>, v: &[f32]) -> Tensor {
        Tensor { name, dtype: Dtype::F32, shape, data: v.iter().flat_map(|x| x.to_le_bytes()).collect() }
    }

    pub fn u32(name: String, shape: Vec<usize>, v: &[u32]) -> Tensor {
        Tensor { name, dtype: Dtype::U32, shape, data: v.iter().flat_map(|x| x.to_le_bytes()).collect() }
    }
}

/// The bytes of a safetensors file holding `tensors`.
pub fn serialize(tensors: &[Tensor]) -> Result<Vec<u8>, String> {
    let views = tensors
        .iter()
        .map(|t| Ok((t.name.clone(), TensorView::new(t.dtype, t.shape.clone(), &t.data)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| format!("building tensors: {e}"))?;
    safetensors::serialize(views, None).map_err(|e| format!("serializing tensors: {e}"))
}

/// A parsed safetensors file; errors are messages naming the file and tensor.
pub struct TensorFile<'a> {
    pub file: &'static str,
    pub st: SafeTensors<'a>,
}

impl<'a> TensorFile<'a> {
    pub fn parse(file: &'static str, bytes: &'a [u8]) -> Result<TensorFile<'a>, String> {
        Ok(TensorFile { file, st: SafeTensors::deserialize(bytes).map_err(|e| format!("{file}: {e}"))? })
    }

    fn raw(&self, name: &str, dtype: Dtype, shape: &[usize]) -> Result<&[u8], String> {
        let t = self.st.tensor(name).map_err(|_| format!("{}: tensor `{name}` is missing", self.file))?;
        if t.dtype() != dtype || t.shape() != shape {
            return Err(format!(
                "{}: tensor `{name}` has {:?} {:?}, expected {dtype:?} {shape:?}",
                self.file,
                t.dtype(),
                t.shape()
            ));
        }
        Ok(t.data())
    }

    /// Tensor `name` as f32, which must have `shape`.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
        Ok(self
            .raw(name, Dtype::F32, shape)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Tensor `name` as u32, which must have `shape`.
    pub fn u32(&self, name: &str, shape: &[usize]) -> Result<Vec<u32>, String> {
        Ok(self
            .raw(name, Dtype::U32, shape)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Shape of tensor `name`, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.st.tensor(name).ok().map(|t| t.shape().to_vec())
    }

    pub fn names(&self) -> Vec<&str> {
        self.st.names()
    }
}
