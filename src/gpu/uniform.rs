//! Uniform blocks: the parameter struct each kernel reads, written once in
//! Rust (`uniform!`) and once in WGSL. `Uniform::shape` flattens the Rust
//! struct to scalar slots so a test can compare it with naga's layout of the
//! WGSL struct, member by member (`tests/shaders.rs`).

/// The scalar types a uniform block holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScalarKind {
    U32,
    I32,
    F32,
}

/// One scalar of a uniform block: byte offset, type, and the name of the
/// field it belongs to (None for the elements of an array, which WGSL spells
/// as separate members or a vector).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UniformSlot {
    pub offset: usize,
    pub kind: ScalarKind,
    pub name: Option<String>,
}

/// A uniform block as scalar slots and its size in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UniformShape {
    pub slots: Vec<UniformSlot>,
    pub size: usize,
}

/// A field type of a uniform block.
pub trait UniformField {
    fn slots(base: usize, name: Option<&str>, out: &mut Vec<UniformSlot>);
}

macro_rules! scalar_field {
    ($t:ty, $kind:ident) => {
        impl UniformField for $t {
            fn slots(offset: usize, name: Option<&str>, out: &mut Vec<UniformSlot>) {
                out.push(UniformSlot {
                    offset,
                    kind: ScalarKind::$kind,
                    name: name.map(str::to_string),
                });
            }
        }
    };
}
scalar_field!(u32, U32);
scalar_field!(i32, I32);
scalar_field!(f32, F32);

impl<T: UniformField, const N: usize> UniformField for [T; N] {
    fn slots(base: usize, _name: Option<&str>, out: &mut Vec<UniformSlot>) {
        for i in 0..N {
            T::slots(base + i * std::mem::size_of::<T>(), None, out);
        }
    }
}

/// A kernel's parameter struct, declared with `uniform!`.
pub trait Uniform: bytemuck::Pod {
    fn shape() -> UniformShape;
}

/// Declares a `#[repr(C)]` uniform block and its `Uniform` impl.
#[macro_export]
macro_rules! uniform {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        $vis struct $name {
            $( $(#[$fmeta])* $fvis $field : $ty ),*
        }

        impl $crate::gpu::Uniform for $name {
            fn shape() -> $crate::gpu::UniformShape {
                let mut slots = Vec::new();
                $(
                    <$ty as $crate::gpu::UniformField>::slots(
                        ::core::mem::offset_of!($name, $field),
                        Some(stringify!($field)),
                        &mut slots,
                    );
                )*
                $crate::gpu::UniformShape {
                    slots,
                    size: ::core::mem::size_of::<$name>(),
                }
            }
        }
    };
}
