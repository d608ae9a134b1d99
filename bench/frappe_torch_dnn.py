# Ceiling check: a FuxiCTR-style DNN on the same Frappe split sizes (90% of
# frappe.validation.libfm to train, 10% to validate, frappe.test.libfm to test).
import sys, numpy as np, torch, torch.nn as nn
from sklearn.metrics import roc_auc_score
torch.set_num_threads(1); torch.manual_seed(0); np.random.seed(0)
def load(p):
    X=[];y=[]
    for l in open(p):
        t=l.split(); y.append(1.0 if t[0]=='1' else 0.0); X.append([int(a.split(':')[0]) for a in t[1:]])
    return torch.tensor(X), torch.tensor(y)
Xv,yv=load('/work/shared/data/frappe/frappe.validation.libfm'); Xt,yt=load('/work/shared/data/frappe/frappe.test.libfm')
perm=torch.randperm(len(yv)); ntr=int(0.9*len(yv)); tr,va=perm[:ntr],perm[ntr:]
Xtr,ytr,Xva,yva=Xv[tr],yv[tr],Xv[va],yv[va]
V=int(max(Xv.max(),Xt.max()))+1; D=int(sys.argv[1]) if len(sys.argv)>1 else 10; reg=float(sys.argv[2]) if len(sys.argv)>2 else 0.05
class M(nn.Module):
    def __init__(s):
        super().__init__(); s.e=nn.Embedding(V,D)
        L=[];d=10*D
        for h in [400,400,400]: L+=[nn.Linear(d,h),nn.BatchNorm1d(h),nn.ReLU(),nn.Dropout(0.2)]; d=h
        L+=[nn.Linear(d,1)]; s.mlp=nn.Sequential(*L)
    def forward(s,x): return s.mlp(s.e(x).flatten(1)).squeeze(1)
m=M(); opt=torch.optim.Adam(m.parameters(),lr=1e-3); bce=nn.BCEWithLogitsLoss()
def auc(X,y):
    m.eval()
    with torch.no_grad(): p=torch.sigmoid(m(X)).numpy()
    m.train(); return roc_auc_score(y.numpy(),p)
best=0;bad=0
for ep in range(60):
    idx=torch.randperm(ntr)
    for i in range(0,ntr,4096):
        b=idx[i:i+4096]; loss=bce(m(Xtr[b]),ytr[b])+reg/2*m.e.weight.pow(2).sum()
        opt.zero_grad(); loss.backward(); opt.step()
    a=auc(Xva,yva); t=auc(Xt,yt); print(ep,f"val {a:.4f} test {t:.4f}",flush=True)
    if a>best: best=a;bad=0
    else:
        bad+=1
        for g in opt.param_groups: g['lr']*=0.1
        if bad>=3: break
