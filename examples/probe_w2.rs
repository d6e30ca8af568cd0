use plumb::*;
use plumb::model::{presets, Model};
use plumb::ops::loss::cross_entropy;
use plumb::ops::optim::{AdamW, AdamWConfig};
use plumb::tape::Tape;
use std::time::Instant;
fn main() {
    let gpu = Gpu::new().unwrap();
    let model = Model::new(&gpu, &presets::resolve("gpt-w2").unwrap(), 0).unwrap();
    let mut opt = AdamW::new(model.params(), AdamWConfig { lr: 3e-4, weight_decay: 0.01, ..Default::default() }).unwrap();
    let ids: Vec<u32> = (0..1024).map(|i| (i * 7 % 256) as u32).collect();
    for it in 0..16 {
        let t0 = Instant::now();
        let idt = Tensor::from_u32(&gpu, &ids, &[8, 128]).unwrap();
        let tg = Tensor::from_u32(&gpu, &ids, &[1024]).unwrap();
        let tape = Tape::new();
        let loss = cross_entropy(&model.forward(Some(&tape), &idt, None).unwrap(), &tg, None).unwrap();
        let t1 = t0.elapsed();
        tape.backward(&loss).unwrap();
        let t2 = t0.elapsed();
        opt.step(model.params(), 3e-4).unwrap();
        model.params().zero_grad().unwrap();
        let t3 = t0.elapsed();
        gpu.flush().unwrap();
        let t4 = t0.elapsed();
        let l = loss.tensor().scalar().unwrap();
        let t5 = t0.elapsed();
        println!("it {it}: fwd rec {:.1} ms, bwd rec {:.1}, opt rec {:.1}, submit {:.1}, wait {:.1} total; loss {l}", t1.as_secs_f64()*1e3, (t2-t1).as_secs_f64()*1e3, (t3-t2).as_secs_f64()*1e3, (t4-t3).as_secs_f64()*1e3, t5.as_secs_f64()*1e3);
    }
}
