//! Hostile components no Rust guest compiles to, encoded here: a component
//! made of dozens of core instances. The sandbox tests load it.

use wasm_encoder::Module;

/// A component that instantiates an empty core module `count` times (and
/// implements no world: the bound must refuse it before the world check).
pub fn many_core_instances(count: u32) -> Vec<u8> {
    use wasm_encoder::{Component, InstanceSection, ModuleArg, ModuleSection};
    let mut component = Component::new();
    component.section(&ModuleSection(&Module::new()));
    let mut instances = InstanceSection::new();
    for _ in 0..count {
        instances.instantiate(0, Vec::<(&str, ModuleArg)>::new());
    }
    component.section(&instances);
    component.finish()
}
