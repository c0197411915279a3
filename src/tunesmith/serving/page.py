"""GET /: a page of our own (no CDN): a chat tab that streams from any generation model, and a
classify tab that shows a classifier's label and probability."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tunesmith serve</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;background:#f5f5f4;color:#1c1917}
header{background:#1c1917;color:#fafaf9;padding:.6em 1em;display:flex;gap:1em;align-items:center}
header h1{font-size:1.1em;margin:0} nav button{background:none;border:0;color:#d6d3d1;font-size:1em;
cursor:pointer;padding:.3em .6em} nav button.on{color:#fff;border-bottom:2px solid #f59e0b}
main{max-width:50em;margin:1em auto;padding:0 1em} section{display:none} section.on{display:block}
#log{background:#fff;border:1px solid #d6d3d1;border-radius:6px;min-height:14em;padding:.8em;
white-space:pre-wrap;overflow-y:auto;max-height:60vh} .user{color:#0369a1;margin:.4em 0}
.assistant{margin:.4em 0 1em} form{display:flex;gap:.5em;margin-top:.6em}
input[type=text],textarea{flex:1;padding:.5em;border:1px solid #a8a29e;border-radius:4px;font:inherit}
button.go{background:#f59e0b;border:0;border-radius:4px;padding:.5em 1em;cursor:pointer}
select{padding:.3em} #result{font-size:1.3em;margin-top:1em} .bar{background:#f59e0b;height:.6em}
.err{color:#b91c1c} label{margin-right:.5em}
</style></head><body>
<header><h1>tunesmith</h1><nav><button id="tab-chat" class="on">Chat</button>
<button id="tab-classify">Classify</button></nav>
<span style="margin-left:auto"><input id="key" type="password" placeholder="API key (if any)"></span></header>
<main>
<section id="chat" class="on">
 <label>model <select id="chat-model"></select></label>
 <label>max tokens <input id="max-tokens" type="number" value="64" min="1" style="width:5em"></label>
 <div id="log"></div>
 <form id="chat-form"><input id="chat-input" type="text" placeholder="Say something" autocomplete="off">
 <button class="go" type="submit">Send</button></form>
</section>
<section id="classify">
 <label>classifier <select id="cls-model"></select></label>
 <form id="cls-form"><textarea id="cls-input" rows="3" placeholder="Text to classify"></textarea>
 <button class="go" type="submit">Classify</button></form>
 <div id="result"></div><div id="probs"></div>
</section>
</main>
<script>
const $ = id => document.getElementById(id);
const messages = [];
function headers(){ const h={"Content-Type":"application/json"}; const k=$("key").value;
  if(k) h["Authorization"]="Bearer "+k; return h; }
function show(tab){ for(const t of ["chat","classify"]){ $(t).classList.toggle("on",t===tab);
  $("tab-"+t).classList.toggle("on",t===tab);} }
$("tab-chat").onclick=()=>show("chat"); $("tab-classify").onclick=()=>show("classify");
async function loadModels(){
  const r = await fetch("/v1/models",{headers:headers()}); const j = await r.json();
  if(!r.ok){ $("log").innerHTML='<div class="err">'+j.error.message+'</div>'; return; }
  for(const [sel,kind] of [["chat-model","generate"],["cls-model","classify"]]){
    $(sel).innerHTML=""; for(const m of j.data.filter(m=>m.kind===kind)){
      const o=document.createElement("option"); o.value=m.id;
      o.textContent=m.id+(m.method?" ("+m.method+")":""); $(sel).appendChild(o);} }
}
function line(cls,text){ const d=document.createElement("div"); d.className=cls; d.textContent=text;
  $("log").appendChild(d); return d; }
$("chat-form").onsubmit = async e => {
  e.preventDefault(); const text=$("chat-input").value.trim(); if(!text) return;
  $("chat-input").value=""; messages.push({role:"user",content:text}); line("user","you: "+text);
  const out=line("assistant",""); let reply="";
  const r = await fetch("/v1/chat/completions",{method:"POST",headers:headers(),body:JSON.stringify({
    model:$("chat-model").value,messages:messages,stream:true,temperature:0,
    max_tokens:parseInt($("max-tokens").value)||64})});
  if(!r.ok){ out.className="err"; out.textContent=(await r.json()).error.message; messages.pop(); return; }
  const reader=r.body.getReader(); const dec=new TextDecoder(); let buf="";
  for(;;){ const {value,done}=await reader.read(); if(done) break; buf+=dec.decode(value,{stream:true});
    let i; while((i=buf.indexOf("\\n\\n"))>=0){ const ev=buf.slice(0,i); buf=buf.slice(i+2);
      if(!ev.startsWith("data: ")) continue; const data=ev.slice(6); if(data==="[DONE]") continue;
      const j=JSON.parse(data); if(j.error){ out.className="err"; out.textContent=j.error.message; continue; }
      const c=j.choices[0]; if(c && c.delta && c.delta.content){ reply+=c.delta.content; out.textContent=reply; } } }
  out.dataset.done="1"; messages.push({role:"assistant",content:reply});
};
$("cls-form").onsubmit = async e => {
  e.preventDefault(); const text=$("cls-input").value.trim(); if(!text) return;
  const r = await fetch("/v1/classify",{method:"POST",headers:headers(),
    body:JSON.stringify({model:$("cls-model").value,input:text})});
  const j = await r.json();
  if(!r.ok){ $("result").innerHTML='<span class="err"></span>'; $("result").firstChild.textContent=j.error.message; return; }
  const d=j.data[0]; $("result").textContent=d.label+" ("+(100*d.probability).toFixed(1)+"%)";
  $("probs").innerHTML=""; for(const [lab,p] of Object.entries(d.probabilities)){
    const row=document.createElement("div"); row.textContent=lab+" "+p.toFixed(3);
    const bar=document.createElement("div"); bar.className="bar"; bar.style.width=(100*p)+"%";
    row.appendChild(bar); $("probs").appendChild(row);} 
};
$("key").onchange=loadModels; loadModels();
</script></body></html>
"""
