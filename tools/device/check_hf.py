"""Compare plumb's dumps (examples/device_check.rs) with transformers and peft: logits, loss and
gradients of GPT-2 and Llama checkpoints written by plumb (f64 reference), a reward model as
AutoModelForSequenceClassification, a LoRA adapter through PeftModel, and the merged model."""
import sys, traceback
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

root = sys.argv[1]
failures = 0


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def report(what, err, tol):
    global failures
    ok = err <= tol
    failures += 0 if ok else 1
    print(f"{'ok  ' if ok else 'FAIL'} {what}: max rel err {err:.2e} (tol {tol:.0e})")


def load(cls, d, dtype):
    try:
        return cls.from_pretrained(d, dtype=dtype, attn_implementation="eager").eval()
    except TypeError:
        return cls.from_pretrained(d, torch_dtype=dtype, attn_implementation="eager").eval()


for name in ["gpt", "llama"]:
    d = f"{root}/{name}"
    try:
        batch = load_file(f"{d}/batch.safetensors")
        ids, tg = batch["ids"].long(), batch["targets"].long()
        m = load(AutoModelForCausalLM, d, torch.float64)
        logits = m(ids).logits
        v = logits.shape[-1]
        loss = F.cross_entropy(logits.reshape(-1, v), tg.reshape(-1))
        loss.backward()
        grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
        for variant in ["register", "tiled"]:
            p = load_file(f"{d}/plumb_{variant}.safetensors")
            report(f"{name}/{variant} logits", rel(p["logits"].reshape(logits.shape), logits.detach()), 1e-4)
            report(f"{name}/{variant} loss", rel(p["loss"], loss.detach().reshape(1)), 1e-5)
            worst = max((rel(p["grad." + n], g), n) for n, g in grads.items() if "grad." + n in p)
            missing = [n for n in grads if "grad." + n not in p]
            report(f"{name}/{variant} grads ({len(grads) - len(missing)} tensors, worst {worst[1]})", worst[0], 1e-3)
            if missing:
                print("     not compared (absent in plumb's dump):", missing)
        # LoRA through peft, and the merged checkpoint
        from peft import PeftModel
        base = load(AutoModelForCausalLM, d, torch.float32)
        pm = PeftModel.from_pretrained(base, f"{d}/lora").eval()
        lora_ref = pm(ids).logits.detach()
        pl = load_file(f"{d}/plumb_lora.safetensors")["logits"].reshape(lora_ref.shape)
        report(f"{name} LoRA adapter via PeftModel", rel(pl, lora_ref), 1e-4)
        merged = load(AutoModelForCausalLM, f"{d}/merged", torch.float64)
        report(f"{name} merged LoRA model", rel(pl, merged(ids).logits.detach()), 1e-4)
        # reward model
        rm = load(AutoModelForSequenceClassification, f"{d}/rm", torch.float64)
        r = load_file(f"{d}/rm/plumb_scores.safetensors")
        ref = rm(r["ids"].long()).logits[:, 0].detach()
        report(f"{name} reward model scores (seq. classification)", rel(r["scores"], ref), 1e-4)
    except Exception:
        failures += 1
        print(f"FAIL {name}: exception")
        traceback.print_exc()

print(f"{failures} failure(s)")
sys.exit(1 if failures else 0)
