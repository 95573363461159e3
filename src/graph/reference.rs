//! The CPU interpreter: a graph evaluated node by node with each op's f64
//! reference, the oracle every device result is checked against.

use std::collections::HashMap;

use super::{Graph, TensorId};
use crate::error::{Error, Result};
use crate::tensor::RefTensor;

/// Evaluates the nodes needed for `targets` with the f64 references. `values`
/// holds inputs and params on entry, and every computed tensor on return;
/// mutated inputs are updated in place.
pub fn eval_reference(
    graph: &Graph,
    targets: &[TensorId],
    values: &mut HashMap<TensorId, RefTensor>,
) -> Result<()> {
    for n in graph.live_nodes(targets) {
        let node = &graph.nodes[n];
        let ins: Vec<&RefTensor> = node
            .inputs
            .iter()
            .map(|t| {
                values.get(t).ok_or_else(|| {
                    Error::Internal(format!("no value for '{}'", graph.info(*t).name))
                })
            })
            .collect::<Result<_>>()?;
        let mut outs = node.op.reference(&ins)?;
        let mutated = node.op.mutates();
        if outs.len() != node.outputs.len() + mutated.len() {
            return Err(Error::Internal(format!(
                "{} reference returned {} tensors",
                node.op.name(),
                outs.len()
            )));
        }
        let new_state = outs.split_off(node.outputs.len());
        for (&i, v) in mutated.iter().zip(new_state) {
            values.insert(node.inputs[i], v);
        }
        for (t, v) in node.outputs.iter().zip(outs) {
            debug_assert_eq!(&v.shape, graph.shape(*t));
            values.insert(*t, v);
        }
    }
    Ok(())
}
