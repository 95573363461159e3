//! Reverse-mode autodiff: walks the forward nodes backwards and asks each op
//! to add the nodes of its gradient, summing contributions that meet at a
//! tensor. The backward pass is ordinary graph nodes, so it is planned,
//! recorded and checked like the forward pass. It lives with the kernels, not
//! in `graph/`, because seeding a loss and summing gradients are kernels
//! themselves: the graph layer knows no op.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::graph::{Graph, TensorId};
use crate::ops::elementwise::{Binary, BinaryKind, Fill};

impl Graph {
    /// Gradients of a scalar `loss` with respect to `wrt` (None where `wrt`
    /// does not influence the loss).
    pub fn grad(&mut self, loss: TensorId, wrt: &[TensorId]) -> Result<Vec<Option<TensorId>>> {
        if self.shape(loss).numel() != 1 {
            return Err(Error::Internal(format!(
                "grad needs a scalar loss, got shape {:?}",
                self.shape(loss)
            )));
        }
        let seed = self.apply1(
            Fill {
                shape: self.shape(loss).clone(),
                value: 1.0,
            },
            &[],
        )?;
        self.backward(&[(loss, seed)], wrt)
    }

    /// Vector-Jacobian product: gradients of Σ⟨seed, output⟩ with respect to `wrt`.
    pub fn backward(
        &mut self,
        seeds: &[(TensorId, TensorId)],
        wrt: &[TensorId],
    ) -> Result<Vec<Option<TensorId>>> {
        for (out, seed) in seeds {
            if self.shape(*out) != self.shape(*seed) {
                return Err(Error::Internal(format!(
                    "seed shape {:?} differs from output shape {:?}",
                    self.shape(*seed),
                    self.shape(*out)
                )));
            }
        }
        let forward_nodes = self.nodes.len();
        // Tensors that depend on any of `wrt`: only their nodes need a backward.
        let mut depends = vec![false; self.tensors.len()];
        for t in wrt {
            depends[t.0] = true;
        }
        for n in &self.nodes[..forward_nodes] {
            if n.inputs.iter().any(|t| depends[t.0]) {
                for o in &n.outputs {
                    depends[o.0] = true;
                }
            }
        }
        let mut grads: HashMap<TensorId, TensorId> = HashMap::new();
        for &(out, seed) in seeds {
            accumulate(self, &mut grads, out, seed)?;
        }
        for i in (0..forward_nodes).rev() {
            let node = self.nodes[i].clone();
            if !node.inputs.iter().any(|t| depends[t.0]) {
                continue;
            }
            let out_grads: Vec<Option<TensorId>> =
                node.outputs.iter().map(|o| grads.get(o).copied()).collect();
            if out_grads.iter().all(Option::is_none) {
                continue;
            }
            let in_grads = node
                .op
                .backward(self, &node.inputs, &node.outputs, &out_grads)?;
            if in_grads.len() != node.inputs.len() {
                return Err(Error::Internal(format!(
                    "{} backward returned {} gradients for {} inputs",
                    node.op.name(),
                    in_grads.len(),
                    node.inputs.len()
                )));
            }
            for (input, g) in node.inputs.iter().zip(in_grads) {
                if let Some(g) = g {
                    if depends[input.0] {
                        if self.shape(g) != self.shape(*input) {
                            return Err(Error::Internal(format!(
                                "{} backward gave a gradient of shape {:?} for an input of shape {:?}",
                                node.op.name(),
                                self.shape(g),
                                self.shape(*input)
                            )));
                        }
                        accumulate(self, &mut grads, *input, g)?;
                    }
                }
            }
        }
        Ok(wrt.iter().map(|t| grads.get(t).copied()).collect())
    }
}

fn accumulate(
    g: &mut Graph,
    grads: &mut HashMap<TensorId, TensorId>,
    t: TensorId,
    contrib: TensorId,
) -> Result<()> {
    let sum = match grads.get(&t) {
        Some(&prev) => g.apply1(Binary::new(BinaryKind::Add), &[prev, contrib])?,
        None => contrib,
    };
    grads.insert(t, sum);
    Ok(())
}
