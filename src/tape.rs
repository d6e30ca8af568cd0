//! The autograd tape, micrograd-sized. Ops run eagerly (they record GPU dispatches) and, when an
//! input is on a recording tape, push one node holding a closure that maps the output's gradient
//! to the inputs' gradients. `backward` walks the nodes once in reverse; creation order is
//! already a topological order. Parameters are leaves whose gradient is *added* into a slice of
//! the flat gradient buffer, which is what makes gradient accumulation across micro-batches work.

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::cell::RefCell;
use std::rc::Rc;

type BackwardFn = Box<dyn FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>>>;

struct Node {
    /// The node id of each op input (None for inputs that need no gradient).
    inputs: Vec<Option<usize>>,
    backward: Option<BackwardFn>,
    /// For parameters: the gradient slice to accumulate into.
    sink: Option<Tensor>,
    /// Leaves made with `Tape::var` keep their gradient in the returned `Grads`.
    keep: bool,
}

#[derive(Default)]
struct TapeInner {
    nodes: Vec<Node>,
    paused: usize,
}

/// A recording of ops for reverse-mode differentiation. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Tape(Rc<RefCell<TapeInner>>);

/// A tensor together with its place on a tape (if it needs a gradient).
#[derive(Clone)]
pub struct Var {
    t: Tensor,
    node: Option<(Tape, usize)>,
}

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Var({:?}, node {:?})", self.t, self.node.as_ref().map(|n| n.1))
    }
}

/// Gradients of the leaves made with [`Tape::var`], returned by `backward`.
pub struct Grads(Vec<Option<Tensor>>);

impl Grads {
    /// The gradient of `v` (None if nothing flowed into it or it is not a leaf of this tape).
    pub fn get(&self, v: &Var) -> Option<&Tensor> {
        v.node.as_ref().and_then(|(_, id)| self.0.get(*id)).and_then(|g| g.as_ref())
    }
}

/// While alive, ops on this tape are not recorded (see [`Tape::no_grad`]).
pub struct NoGradGuard(Tape);

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        self.0 .0.borrow_mut().paused -= 1;
    }
}

impl Tape {
    /// An empty tape.
    pub fn new() -> Tape {
        Tape::default()
    }

    fn push(&self, node: Node) -> usize {
        let mut t = self.0.borrow_mut();
        t.nodes.push(node);
        t.nodes.len() - 1
    }

    fn recording(&self) -> bool {
        self.0.borrow().paused == 0
    }

    /// A leaf that needs a gradient; read it from the `Grads` that `backward` returns.
    pub fn var(&self, t: Tensor) -> Var {
        let id = self.push(Node { inputs: vec![], backward: None, sink: None, keep: true });
        Var { t, node: Some((self.clone(), id)) }
    }

    /// A parameter leaf: its gradient is added into `grad` (same shape) by `backward`.
    pub fn param(&self, value: Tensor, grad: Tensor) -> Result<Var> {
        if value.shape() != grad.shape() {
            return Err(Error::shape("Tape::param", format!("value {:?} vs grad {:?}", value.shape(), grad.shape())));
        }
        let id = self.push(Node { inputs: vec![], backward: None, sink: Some(grad), keep: false });
        Ok(Var { t: value, node: Some((self.clone(), id)) })
    }

    /// Stop recording until the guard is dropped (reference models, evaluation, generation).
    pub fn no_grad(&self) -> NoGradGuard {
        self.0.borrow_mut().paused += 1;
        NoGradGuard(self.clone())
    }

    /// Number of recorded nodes.
    pub fn len(&self) -> usize {
        self.0.borrow().nodes.len()
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Backpropagate from a one-element `loss` seeded with 1.
    pub fn backward(&self, loss: &Var) -> Result<Grads> {
        if loss.tensor().len() != 1 {
            return Err(Error::shape("Tape::backward", format!("loss must have one element, has shape {:?}", loss.shape())));
        }
        // A fill dispatch, not an upload: it stays inside the step's open compute pass.
        let seed = Tensor::empty(loss.tensor().gpu(), loss.shape(), crate::tensor::DType::F32, "loss seed")?;
        crate::gpu::linear::fill(&seed, 1.0)?;
        self.backward_with(loss, seed)
    }

    /// Backpropagate from `out` with the given output gradient. Clears the tape.
    pub fn backward_with(&self, out: &Var, grad: Tensor) -> Result<Grads> {
        let Some((tape, root)) = &out.node else {
            return Err(Error::shape("Tape::backward", "the output does not depend on anything that needs a gradient"));
        };
        if !Rc::ptr_eq(&tape.0, &self.0) {
            return Err(Error::shape("Tape::backward", "the output was recorded on another tape"));
        }
        if grad.shape() != out.shape() {
            return Err(Error::shape("Tape::backward", format!("gradient {:?} vs output {:?}", grad.shape(), out.shape())));
        }
        // Take the nodes out so backward closures may use the tape's owner freely.
        let mut nodes = std::mem::take(&mut self.0.borrow_mut().nodes);
        let mut grads: Vec<Option<Tensor>> = vec![None; nodes.len()];
        grads[*root] = Some(grad);
        for id in (0..=*root).rev() {
            let node = &mut nodes[id];
            let Some(g) = (if node.keep { grads[id].clone() } else { grads[id].take() }) else {
                continue;
            };
            if let Some(sink) = &node.sink {
                crate::gpu::linear::add_assign(sink, &g, 1.0)?;
            }
            if let Some(f) = node.backward.take() {
                let input_grads = f(&g)?;
                for (inp, gi) in node.inputs.iter().zip(input_grads) {
                    let (Some(inp), Some(gi)) = (inp, gi) else { continue };
                    grads[*inp] = Some(match grads[*inp].take() {
                        None => gi,
                        // Out of place: a gradient may alias another node's (an add passes
                        // its output gradient to both inputs), so never write into one.
                        Some(acc) => crate::gpu::linear::axpby(&acc, &gi, 1.0, 1.0)?,
                    });
                }
            }
        }
        Ok(Grads(grads))
    }
}

impl Var {
    /// A value that needs no gradient.
    pub fn constant(t: Tensor) -> Var {
        Var { t, node: None }
    }

    /// Record the result `out` of an op on `inputs`. `backward` receives the gradient of `out`
    /// and returns one gradient per input, in order (None where an input needs none). If no
    /// input is on a recording tape, nothing is recorded and `backward` is dropped unused.
    pub fn from_op(
        out: Tensor,
        inputs: &[&Var],
        backward: impl FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>> + 'static,
    ) -> Var {
        let tape = inputs.iter().find_map(|v| v.node.as_ref().map(|(t, _)| t.clone()));
        match tape {
            Some(tape) if tape.recording() => {
                let ids = inputs.iter().map(|v| v.node.as_ref().map(|(_, id)| *id)).collect();
                let id = tape.push(Node { inputs: ids, backward: Some(Box::new(backward)), sink: None, keep: false });
                Var { t: out, node: Some((tape, id)) }
            }
            _ => Var::constant(out),
        }
    }

    /// Like [`Var::from_op`], but recorded on `tape` (while it records) even when no input is
    /// on it: for ops whose backward has effects of its own, such as a checkpointed block that
    /// adds its parameters' gradients (see [`checkpoint`]).
    pub fn from_op_on(
        tape: &Tape,
        out: Tensor,
        inputs: &[&Var],
        backward: impl FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>> + 'static,
    ) -> Var {
        if !tape.recording() {
            return Var::constant(out);
        }
        let ids = inputs
            .iter()
            .map(|v| v.node.as_ref().filter(|(t, _)| Rc::ptr_eq(&t.0, &tape.0)).map(|(_, id)| *id))
            .collect();
        let id = tape.push(Node { inputs: ids, backward: Some(Box::new(backward)), sink: None, keep: false });
        Var { t: out, node: Some((tape.clone(), id)) }
    }

    /// True when a gradient will flow into this value.
    pub fn requires_grad(&self) -> bool {
        self.node.is_some()
    }

    /// The underlying tensor.
    pub fn tensor(&self) -> &Tensor {
        &self.t
    }

    pub fn shape(&self) -> &[usize] {
        self.t.shape()
    }

    /// This value cut off from the tape (gradients stop here).
    pub fn detach(&self) -> Var {
        Var::constant(self.t.clone())
    }

    /// Read back as f32.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        self.t.to_f32_vec()
    }

    /// Same data, new shape; gradients are reshaped back.
    pub fn reshape(&self, shape: &[usize]) -> Result<Var> {
        let old = self.shape().to_vec();
        let out = self.t.reshape(shape)?;
        Ok(Var::from_op(out, &[self], move |g| Ok(vec![Some(g.reshape(&old)?)])))
    }
}

/// Activation checkpointing: `f(x)` as ONE op on `tape` that keeps only its input. The forward
/// runs `f(None, x)` (nothing recorded, the block's activations freed at once); the backward
/// runs `f(Some(sub), x)` again on a fresh sub-tape, backpropagates the output gradient through
/// it (parameter leaves add into their gradient buffers as usual) and hands back x's gradient.
/// The recomputed forward is the same dispatches on the same values and the sub-tape walks the
/// same nodes in the same order, so losses and gradients are bit-identical to not checkpointing.
pub fn checkpoint(tape: &Tape, x: &Var, f: impl Fn(Option<&Tape>, &Var) -> Result<Var> + 'static) -> Result<Var> {
    let out = f(None, &Var::constant(x.tensor().clone()))?;
    let input = x.tensor().clone();
    Ok(Var::from_op_on(tape, out.tensor().clone(), &[x], move |g| {
        let sub = Tape::new();
        let leaf = sub.var(input);
        let y = f(Some(&sub), &leaf)?;
        if !y.requires_grad() {
            return Ok(vec![None]);
        }
        let grads = sub.backward_with(&y, g.clone())?;
        Ok(vec![grads.get(&leaf).cloned()])
    }))
}
